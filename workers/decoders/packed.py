"""Packed prefill: the joining prompts run as one sequence, without padding.

A left-padded joint prefill runs ``rows x longest`` tokens through every
linear layer; with prompts of different lengths (as concurrent users send)
about a third of those are padding (32 chat prompts of the worker bench: 523
real tokens of 768 after their shared head). Packed, the prompts' tokens are
laid end to end in one row, each keeps its own position ids, and a
block-causal mask lets each attend only to the cached head (if any) and to its
own earlier tokens, so each prompt's keys, values and logits are those of its
run alone. The dense mask makes attention quadratic in the packed length, so
``packing_pays`` picks packing only where the linear layers' saving exceeds it.
The packed cache is then unpacked into the padded backend's row layout: the
head, the row's own padding, its prompt's rest.

Only a model that honours a custom 4D attention mask and per-token position ids
can be packed; ``packs_exactly`` probes that once.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache


def packed_inputs(rests: list[list[int]], head: int, device: str) -> dict[str, Any]:
    """Model inputs running ``rests`` (each prompt after a cached head of ``head``
    tokens) as one packed row; ``logits_to_keep`` picks each prompt's last position."""
    lengths = torch.tensor([len(r) for r in rests], device=device)
    total = int(lengths.sum())
    segment = torch.repeat_interleave(torch.arange(len(rests), device=device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    index = torch.arange(total, device=device)
    # Row q sees column k of the packed part when both are one prompt's and k <= q.
    own = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
    mask = torch.cat([own.new_ones((total, head)), own], dim=1)
    return {"input_ids": torch.tensor([[t for r in rests for t in r]], device=device),
            "position_ids": (head + index - starts[segment])[None],
            "attention_mask": mask[None, None],
            "logits_to_keep": starts + lengths - 1}


def unpack(cache: Any, lengths: list[int], head: int) -> tuple[DynamicCache, torch.Tensor]:
    """The rows of a packed prefill's ``cache`` (one row: the head, then each prompt's
    rest), each laid out as the head, its own left padding, its rest; and their mask."""
    width = max(lengths)
    device = cache.layers[0].keys.device
    columns, mask, start = [], [], head
    for n in lengths:
        pad = width - n  # padding reads column 0: finite, and masked out
        columns += [*range(head), *[0] * pad, *range(start, start + n)]
        mask.append([1] * head + [0] * pad + [1] * n)
        start += n
    index = torch.tensor(columns, device=device)
    rows, length = len(lengths), head + width

    def take(t: torch.Tensor) -> torch.Tensor:  # [1, heads, packed, dim] -> [rows, heads, length, dim]
        return t[0].index_select(1, index).unflatten(1, (rows, length)).transpose(0, 1)

    unpacked = DynamicCache([(take(layer.keys), take(layer.values)) for layer in cache.layers])
    return unpacked, torch.tensor(mask, device=device)


def packing_pays(config: Any, lengths: list[int], head: int) -> bool:
    """Whether a packed prefill costs fewer flops than a left-padded one: the padding's
    linear work saved against the dense mask's attention across prompts."""
    hidden = config.hidden_size
    heads = getattr(config, "num_attention_heads", 1)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    mlp = getattr(config, "intermediate_size", None) or 4 * hidden
    per_token = 2 * hidden * (2 * hidden + 2 * kv + 3 * mlp)  # one layer's linear flops
    per_pair = 4 * heads * head_dim  # one query-key pair: scores and weighted values
    rows, width, total = len(lengths), max(lengths), sum(lengths)
    padded = rows * width * (per_token + (head + width) * per_pair)
    packed = total * (per_token + (head + total) * per_pair)
    return packed < padded


@torch.inference_mode()
def packs_exactly(model: Any, device: str) -> bool:
    """Whether ``model`` gives two packed prompts the logits each gets alone (it
    honours a 4D mask and position ids)."""
    prompts = [[1, 2, 3], [4, 5]]
    try:
        inputs = packed_inputs(prompts, 0, device)
        packed = model(**inputs, use_cache=True).logits[0].float()
        alone = [model(input_ids=torch.tensor([p], device=device), use_cache=True,
                       logits_to_keep=1).logits[0, -1].float() for p in prompts]
    except Exception:  # noqa: BLE001 - a model that cannot take these inputs is not packed
        return False
    return all(torch.allclose(packed[i], alone[i], rtol=1e-2, atol=1e-2 * alone[i].abs().max())
               for i in range(len(prompts)))
