"""The KV caches of a decode batch: per-sequence caches stacked and left-padded.

Every row of a ``PaddedBatch`` is one sequence's cache; rows are left-padded
to one common length, and an attention mask marks the padding, so one forward
pass of ``[B, 1]`` tokens decodes every sequence at once. Rows join (the
prefill of one or more new sequences, a left-padded pass or a packed one
unpacked into left-padded rows, then padded to the batch's length or the batch
padded to it) and leave (dropped by index)
between two steps; columns that became padding in every row are trimmed off,
so a long sequence leaving gives its memory back. Each row keeps its own
position ids, counted from its own first token, so rotary positions are those
of the sequence run alone.

Each layer lives in a ``SlabLayer``: a preallocated buffer with spare columns,
so a decode step writes one column in place where transformers' DynamicLayer
copies the whole cache (``torch.cat``) every step, which at 32 rows costs as
much memory traffic as the attention itself.

Only plain ``DynamicLayer`` caches (full attention) can be stacked this way;
``batchable`` says whether a prefill's cache is one.

``PaddedDecoder`` drives a ``PaddedBatch`` with the model's own eager forward
passes: the batcher's decode backend for any model (``workers.decoders.slots``
is the faster one for Llama-family models). Prompts that begin with a head it
has cached (``workers.decoders.prefix``) prefill only their rest on top of that
head's KV: such a row is the head, its own padding, then its prompt's rest.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from workers.decoders.backend import Launched
from workers.decoders.packed import packed_inputs, packing_pays, packs_exactly, unpack
from workers.decoders.prefix import KV, PrefixCache
from workers.sequence import Sequence

SPARE_COLUMNS = 128  # columns a slab grows by: one copy of the cache per 128 steps


def batchable(cache: Any) -> bool:
    """Whether ``cache`` is a DynamicCache of plain full-attention layers (no sliding
    windows, no quantized or linear-attention state), which rows can be padded in."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized
                                for layer in layers)


class SlabLayer(DynamicLayer):
    """One layer's keys and values, ``[rows, heads, columns, dim]``, in a buffer with
    spare columns after them. ``keys``/``values`` are views of the used columns."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._place([(keys, values)], keys.shape[2])

    def _place(self, parts: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        """Fresh slabs holding ``parts`` stacked by rows, each right-aligned to ``length``
        (zeros before: masked, and finite, so a zero weight times them stays zero)."""
        rows = sum(k.shape[0] for k, _ in parts)
        heads, dim = parts[0][0].shape[1], parts[0][0].shape[3]
        self._k = parts[0][0].new_zeros((rows, heads, length + SPARE_COLUMNS, dim))
        self._v = torch.zeros_like(self._k)
        row = 0
        for k, v in parts:
            n, cols = k.shape[0], k.shape[2]
            self._k[row:row + n, :, length - cols:length] = k
            self._v[row:row + n, :, length - cols:length] = v
            row += n
        self.start, self.end = 0, length
        self._views()

    def _views(self) -> None:
        self.keys = self._k[:, :, self.start:self.end]
        self.values = self._v[:, :, self.start:self.end]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[2]
        if self.end + new > self._k.shape[2]:
            self._place([(self.keys, self.values)], self.end - self.start)
        self._k[:, :, self.end:self.end + new] = key_states
        self._v[:, :, self.end:self.end + new] = value_states
        self.end += new
        self._views()
        return self.keys, self.values

    def stack(self, other: "SlabLayer") -> None:
        """Append ``other``'s rows; the shorter side is padded on the left."""
        length = max(self.end - self.start, other.end - other.start)
        self._place([(self.keys, self.values), (other.keys, other.values)], length)

    def select(self, index: torch.Tensor, drop_front: int) -> None:
        """Keep the rows in ``index``, without the first ``drop_front`` columns."""
        self._k, self._v = self._k[index], self._v[index]
        self.start += drop_front
        self._views()


class PaddedBatch:
    """A batch's KV cache, its padding mask and each row's next position id."""

    def __init__(self, cache: Any = None, mask: torch.Tensor | None = None) -> None:
        """``cache``: the DynamicCache of a prefill whose attention mask was ``mask``."""
        if cache is not None:
            cache.layers[:] = [SlabLayer(layer.keys, layer.values) for layer in cache.layers]
        self.cache = cache
        self.mask = mask  # [B, L]: 1 a real token, 0 padding
        # [B]: the position id of each row's next token (its count of real tokens)
        self.positions = None if mask is None else mask.sum(dim=1)
        self.padded = mask is not None and not bool(mask.all())

    def __len__(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    @property
    def length(self) -> int:
        """The padded length of every row's cache."""
        return 0 if self.mask is None else self.mask.shape[1]

    @staticmethod
    def prefill_inputs(prompts: list[list[int]], device: str) -> dict[str, Any]:
        """Model inputs that prefill ``prompts`` in one pass, left-padded to the longest.
        Its ``attention_mask`` makes the ``PaddedBatch`` of the pass's cache."""
        width = max(map(len, prompts))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                            device=device)
        return {"input_ids": ids, "attention_mask": mask,
                "position_ids": (mask.cumsum(dim=1) - 1).clamp(min=0)}

    def extend(self, other: "PaddedBatch") -> None:
        """Append ``other``'s rows, padding whichever is shorter on the left."""
        if not len(other):
            return
        if not len(self):
            self.cache, self.mask, self.positions = other.cache, other.mask, other.positions
            self.padded = other.padded
            return
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.stack(theirs)
        length = max(self.length, other.length)
        self.mask = torch.cat([_pad_left(self.mask, length - self.length),
                               _pad_left(other.mask, length - other.length)])
        self.positions = torch.cat([self.positions, other.positions])
        self.padded = not bool(self.mask.all())

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows``, in that order; trim the columns that are padding everywhere."""
        if not rows:
            self.cache = self.mask = self.positions = None
            self.padded = False
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask[index]
        first = int(torch.argmax(mask.any(dim=0).to(torch.uint8)))  # first real column
        if first == 0 and rows == list(range(len(self))):
            return
        for layer in self.cache.layers:
            layer.select(index, first)
        self.mask, self.positions = mask[:, first:], self.positions[index]
        self.padded = not bool(self.mask.all())

    def step_inputs(self) -> dict[str, Any]:
        """Model inputs (besides input_ids) for one token per row on top of the cache;
        the mask and positions advance with them. The mask is left out when no row is
        padded, so a batch of one runs exactly as a single sequence does."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        inputs = {"past_key_values": self.cache, "position_ids": self.positions[:, None],
                  "attention_mask": self.mask if self.padded else None}
        self.positions = self.positions + 1
        return inputs


def _pad_left(mask: torch.Tensor, n: int) -> torch.Tensor:
    """``mask`` ([rows, columns]) with ``n`` zero columns before it."""
    return torch.nn.functional.pad(mask, (n, 0)) if n else mask


class PaddedDecoder:
    """A :class:`~workers.decoders.backend.DecodeBackend` over a ``PaddedBatch``: the
    model's own eager forward passes, prompts prefilled left-padded. Works for any
    model whose cache is ``batchable``. Joining prompts of unequal lengths are
    prefilled packed, without padding (``workers.decoders.packed``), where the
    model allows it and it pays."""

    pipelines = False  # each step needs its input tokens from the host

    def __init__(self, engine: Any, kv_budget_bytes: int, prefixes: bool = True) -> None:
        """``prefixes``: prefill prompts' shared heads once (``workers.decoders.prefix``)."""
        self.engine, self.kv_budget_bytes = engine, kv_budget_bytes
        self.batch, self._group = PaddedBatch(), PaddedBatch()
        # A quarter of the batch's budget on top of it, for the prefixes' own KV.
        self.prefixes = PrefixCache(self._prefix_kv, engine.kv_bytes_per_token,
                                    kv_budget_bytes // 4) if prefixes else None
        self.packs = packs_exactly(engine.model, engine.device)

    def fits(self, rows: list[Sequence], joining: list[Sequence]) -> bool:
        """Whether the batch with ``joining`` stays in budget at its worst case: every
        row at the longest row's length plus the most tokens any row may still add."""
        seqs = [*rows, *joining]
        length = max([self.batch.length] + [len(s.input_ids) for s in seqs])
        worst = len(seqs) * (length + max(s.remaining for s in seqs))
        return worst * self.engine.kv_bytes_per_token <= self.kv_budget_bytes

    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        prompts = [s.input_ids for s in seqs]
        found = self.prefixes.find(prompts) if self.prefixes is not None else None
        length, kv = found or (0, None)
        rests = [p[length:] for p in prompts]
        if self.packs and packing_pays(self.engine.model.config, list(map(len, rests)), length):
            return self._prefill_packed(rests, length, kv)
        # Each row: the cached prefix (if any), its own padding, the rest of its prompt.
        inputs = PaddedBatch.prefill_inputs(rests, self.engine.device)
        mask, cache = inputs["attention_mask"], None
        if kv is not None:
            mask = torch.cat([mask.new_ones((len(prompts), length)), mask], dim=1)
            cache = DynamicCache([(k.expand(len(prompts), -1, -1, -1).contiguous(),
                                   v.expand(len(prompts), -1, -1, -1).contiguous())
                                  for k, v in kv])
        # The mask goes to the model only when some row is padded.
        out = self.engine.model(input_ids=inputs["input_ids"], past_key_values=cache,
                                use_cache=True, position_ids=inputs["position_ids"] + length,
                                attention_mask=None if bool(mask.all()) else mask,
                                logits_to_keep=1)
        self._group = PaddedBatch(out.past_key_values, mask)
        return out.logits[:, -1].float()

    def _prefill_packed(self, rests: list[list[int]], length: int, kv: KV | None
                        ) -> torch.Tensor:
        """``prefill`` of ``rests`` packed in one row on top of a cached prefix of
        ``length`` tokens (its keys and values ``kv``), unpacked into padded rows."""
        inputs = packed_inputs(rests, length, self.engine.device)
        cache = None if kv is None else DynamicCache(list(kv))  # one row: no copies
        out = self.engine.model(past_key_values=cache, use_cache=True, **inputs)
        self._group = PaddedBatch(*unpack(out.past_key_values, list(map(len, rests)), length))
        return out.logits[0].float()

    def _prefix_kv(self, tokens: list[int]) -> KV | None:
        """A prefix's keys and values, prefilled alone; None when the model's cache is
        not plain full attention (a sliding window's would not be reusable)."""
        cache = self.engine.forward(tokens, None)[1]
        if not batchable(cache):
            return None
        return [(layer.keys, layer.values) for layer in cache.layers]

    def admit(self, going_on: list[int], tokens: list[int]) -> None:
        self._group.keep(going_on)
        self.batch.extend(self._group)
        self._group = PaddedBatch()

    def launch(self, seqs: list[Sequence]) -> Launched:
        tokens = torch.tensor([[s.last_token] for s in seqs], dtype=torch.long,
                              device=self.engine.device)
        out = self.engine.model(input_ids=tokens, use_cache=True, logits_to_keep=1,
                                **self.batch.step_inputs())
        logits = out.logits[:, -1]
        return Launched(logits, lambda: logits.argmax(dim=-1).tolist())

    def feed(self, tokens: dict[int, int]) -> None:
        """Nothing to do: ``launch`` reads every row's last token from its Sequence."""

    def keep(self, rows: list[int]) -> list[int]:
        self.batch.keep(rows)
        return rows

    def reset(self) -> None:
        self.batch, self._group = PaddedBatch(), PaddedBatch()
