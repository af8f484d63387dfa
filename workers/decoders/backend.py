"""The decode backend port: how the batcher's forward passes are run.

``workers.batching.Batcher`` schedules requests (who joins, who leaves, who
samples what); a :class:`DecodeBackend` owns the KV cache of the running rows
and the model calls on it. Two backends: ``workers.decoders.padded`` (the
model's own forward over a left-padded cache; any model whose cache can be
stacked) and ``workers.decoders.slots`` (a slot cache and a decode step written
from a Llama-family model's weights, CUDA-graphed on a GPU).
``workers.decoders.factory`` picks one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from workers.sequence import Sequence


@dataclass(eq=False)
class Launched:
    """A decode step whose forward pass was issued (and may still run on the device).

    ``logits`` ([rows, vocab]) stay valid until the next step is launched;
    ``greedy()`` is every row's argmax token, read back to the host once.
    """

    logits: torch.Tensor
    greedy: Callable[[], list[int]]


class DecodeBackend(Protocol):
    """The rows of a decode batch and the forward passes over them. Rows are in
    the order they were admitted, less those dropped."""

    # True when a step leaves its argmax tokens on the device as the rows' next
    # inputs, so the batcher may launch the next step before reading this one's.
    pipelines: bool

    def fits(self, rows: list[Sequence], joining: list[Sequence]) -> bool:
        """Whether ``joining`` may join ``rows`` within the KV budget."""
        ...

    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        """Run the joining prompts; their next-token logits, one row each."""
        ...

    def admit(self, going_on: list[int], tokens: list[int]) -> None:
        """Add the rows of the last prefill that go on (indices into it), with
        their first tokens."""
        ...

    def launch(self, seqs: list[Sequence]) -> Launched:
        """Issue one decode step for every row."""
        ...

    def feed(self, tokens: dict[int, int]) -> None:
        """Override the next input token of some rows (sampled ones)."""
        ...

    def keep(self, rows: list[int]) -> list[int]:
        """Keep only ``rows``; the surviving old row indices in their new order."""
        ...

    def reset(self) -> None:
        """Forget every row."""
        ...
