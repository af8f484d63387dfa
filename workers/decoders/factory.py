"""Which decode backend a batcher runs: ``pick_decoder``."""
from __future__ import annotations

import logging
from typing import Any

from workers.decoders.backend import DecodeBackend
from workers.decoders.llama_step import unsupported
from workers.decoders.padded import PaddedDecoder, batchable
from workers.decoders.slots import SlotDecoder

log = logging.getLogger("inferbus.worker")


def pick_decoder(engine: Any, choice: str, max_batch: int, kv_budget_bytes: int
                 ) -> tuple[DecodeBackend, int]:
    """The backend ``choice`` names ("slots", "padded", or "auto": slots for a
    Llama-family model on CUDA, where graphed steps pay; padded elsewhere) and the
    most rows it may decode together (1 for a cache the padded backend cannot stack)."""
    why = unsupported(engine.model)
    if choice == "auto":
        choice = "slots" if why is None and str(engine.device).startswith("cuda") else "padded"
    if choice == "slots":
        if why is not None:
            raise ValueError(f"{engine.name}: no slot decoder: {why}")
        return SlotDecoder(engine, max_batch, kv_budget_bytes), max_batch
    if choice != "padded":
        raise ValueError(f"unknown decoder {choice!r}")
    if max_batch > 1 and not batchable(engine.forward([0], None)[1]):
        log.warning("%s: its KV cache cannot be stacked; one sequence at a time", engine.name)
        max_batch = 1
    return PaddedDecoder(engine, kv_budget_bytes), max_batch
