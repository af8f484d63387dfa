"""The batcher's decode backend for Llama-family models: a slot KV cache and graphed steps.

``SlotDecoder`` keeps every running sequence in a row of a
``workers.decoders.slot_cache`` cache and decodes them all with
``workers.decoders.llama_step``'s step: on CUDA one CUDA
graph replay per step, bucketed by rows (powers of two) and attended columns
(powers of two from 64), instead of hundreds of eager kernel launches and a
cache that grows a column per step. Prompts are prefilled by a (non-graphed)
pass of the same weights, right-padded (causal attention alone keeps padding
out of the real tokens), that writes their keys and values into their rows.

Each step leaves its argmax tokens on the device as the rows' next inputs, so
when every row is greedy the batcher may launch the next step before it reads
this one's tokens back (``pipelines``): the host's per-token work then overlaps
the device's step. Sampled rows get their tokens from their own samplers and
``feed`` them in before the next launch.
"""
from __future__ import annotations

from typing import Any

import torch

from workers.decoders.backend import Launched
from workers.decoders.llama_step import GraphedSteps, LlamaSlotStep
from workers.decoders.slot_cache import COLUMN_STEP, SlotCache, pow2, round_up
from workers.sequence import Sequence

MIN_COLUMNS = 64  # the narrowest attention bucket of a graphed step


def columns_needed(seq: Sequence) -> int:
    """Columns a sequence may fill: its prompt, every token it may add, and the one
    extra step a pipelined batch may run before it learns the sequence ended."""
    return len(seq.input_ids) + seq.remaining + 1


class SlotDecoder:
    """A :class:`~workers.decoders.backend.DecodeBackend` over a slot cache."""

    def __init__(self, engine: Any, max_rows: int, kv_budget_bytes: int,
                 graphs: bool | None = None) -> None:
        """``graphs``: capture CUDA graphs (default: on CUDA)."""
        self.engine = engine
        model, cuda = engine.model, str(engine.device).startswith("cuda")
        step = LlamaSlotStep(model, round_up(engine.context_length + 2, COLUMN_STEP))
        self.cache = SlotCache(model.config.num_hidden_layers, step.kv_heads, step.head_dim,
                               model.dtype, engine.device, max_rows, kv_budget_bytes)
        self.steps = GraphedSteps(step, cuda if graphs is None else graphs)
        self.pipelines = cuda
        # Two pinned buffers for the tokens read back: a pipelined step's tokens are
        # still being read while the next step's are copied.
        self._host = [torch.empty(max_rows, dtype=torch.long, pin_memory=True)
                      for _ in range(2)] if cuda else []
        self._joined = 0  # the first row of the last prefill

    def fits(self, rows: list[Sequence], joining: list[Sequence]) -> bool:
        needs = self.cache.needs + [columns_needed(s) for s in joining]
        return self.cache.geometry(len(needs), max(needs)) is not None

    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        """Prefill ``seqs`` straight into the rows after the used ones (reserved here)."""
        cache, device = self.cache, self.engine.device
        lengths, needs = [len(s.input_ids) for s in seqs], [columns_needed(s) for s in seqs]
        if cache.reserve(len(cache) + len(seqs), max(cache.needs + needs)):
            self.steps.reset()  # the graphs wrote to the old buffer
        width = max(lengths)
        ids = torch.tensor([s.input_ids + [0] * (width - len(s.input_ids)) for s in seqs],
                           device=device)
        start = len(cache)
        logits = self.steps.step.prefill(ids, cache.kv, start,
                                         torch.tensor(lengths, device=device))
        cache.add(lengths, needs)
        self._joined = start
        return logits.float()

    def admit(self, going_on: list[int], tokens: list[int]) -> None:
        start = self._joined
        self.cache.set_ids({start + i: tokens[i] for i in going_on})
        self.cache.drop_tail(start, [start + i for i in going_on])

    def launch(self, seqs: list[Sequence]) -> Launched:
        n, cache = len(self.cache), self.cache
        longest = max(cache.lengths) + 1
        if self.steps.graphs:  # buckets, so a few graphs serve every batch
            b = min(pow2(n), cache.rows)
            columns = min(max(MIN_COLUMNS, pow2(longest)), cache.length)
        else:
            b, columns = n, longest
        logits, tokens = self.steps.run(cache.ids, cache.pos, cache.kv, b, columns)
        cache.advance(b, tokens)
        if not self._host:  # eager on the host: every pass has tensors of its own
            return Launched(logits[:n], lambda: tokens[:n].tolist())
        host = self._host[0]
        self._host.reverse()
        host[:n].copy_(tokens[:n], non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def greedy() -> list[int]:
            done.synchronize()
            return host[:n].tolist()
        return Launched(logits[:n], greedy)

    def feed(self, tokens: dict[int, int]) -> None:
        self.cache.set_ids(tokens)

    def keep(self, rows: list[int]) -> list[int]:
        return self.cache.keep(rows)

    def reset(self) -> None:
        self.cache.clear()
