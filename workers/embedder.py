"""The embeddings engine: a sentence-transformers model in plain transformers +
torch, batching concurrent requests into shared forward passes.

A model directory is an embeddings model when its ``modules.json`` (the
sentence-transformers layout) names a ``Pooling`` module. It is loaded with
``transformers.AutoModel`` (a ``BertModel`` for all-MiniLM-L6-v2); a text's
vector is the mean of its last hidden states over its real tokens (the
attention mask, as ``1_Pooling/config.json`` says), L2-normalised when
``modules.json`` names ``Normalize``, exactly as sentence-transformers
computes it. Inputs longer than ``sentence_bert_config.json``'s
``max_seq_length`` are refused (:class:`ContextLengthExceeded`), never
silently cut: what is billed is what was embedded.

Batching: every request's texts join one queue; a single drain task takes up
to ``max_batch`` waiting texts (of any requests), pads them, runs ONE forward
pass in a thread, and hands each request its vectors; texts that arrive during
a pass go into the next. A request larger than ``max_batch`` spans passes.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

from bus.vectors import Vectors, pack
from workers.generation import ContextLengthExceeded, GenerationRequest, Step
from workers.omp import release_openmp_pool

log = logging.getLogger("inferbus.worker")
DEFAULT_MAX_BATCH = 64  # texts per forward pass


def is_embedding_model(path: Path) -> bool:
    try:
        modules = json.loads((Path(path) / "modules.json").read_text())
    except (OSError, ValueError):
        return False
    return any(str(m.get("type", "")).endswith(".Pooling") for m in modules)


@dataclass
class _Waiting:
    texts: list[str]
    future: asyncio.Future
    vectors: list[bytes | None] = field(default_factory=list)
    taken: int = 0  # texts handed to a pass so far
    done: int = 0  # texts with a vector


class Embedder:
    """Embeds texts for a worker: its name, context length, dims and device (for
    heartbeats and checks), one :meth:`embed` per job."""

    kind = "embedding"

    def __init__(self, model, tokenizer, name: str, dims: int, context_length: int,
                 normalize: bool, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.dims, self.context_length, self.normalize = dims, context_length, normalize
        self.max_batch = max_batch
        self.device = str(next(model.parameters()).device)
        self._queue: list[_Waiting] = []
        self._drain: asyncio.Task | None = None
        self._closed = False
        self.passes = 0  # forward passes run: fewer than requests when batching works

    @classmethod
    def load(cls, path: Path, name: str | None = None, max_batch: int = DEFAULT_MAX_BATCH,
             device: str | None = None) -> "Embedder":
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        modules = json.loads((path / "modules.json").read_text())
        pooling = next(m for m in modules if str(m["type"]).endswith(".Pooling"))
        mode = json.loads((path / pooling["path"] / "config.json").read_text())
        if not mode.get("pooling_mode_mean_tokens"):
            raise ValueError(f"{path}: only mean pooling is served (its pooling: {mode})")
        try:
            limit = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"]
        except (OSError, ValueError, KeyError):
            limit = None
        model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        context = int(limit or model.config.max_position_embeddings)
        release_openmp_pool()  # the loading thread's: passes run on others (workers/omp.py)
        return cls(model, tokenizer, name or path.name, int(mode["word_embedding_dimension"]),
                   context, any(str(m["type"]).endswith(".Normalize") for m in modules),
                   max_batch)

    def count(self, texts: list[str]) -> list[int]:
        """Each text's tokens as the model sees them (its special tokens included)."""
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    def forward(self, texts: list[str]) -> list[bytes]:
        """One padded forward pass: each text's vector as little-endian float32 bytes."""
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=False, return_tensors="pt")
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        rows = pooled.to(torch.float32).cpu().numpy().astype("<f4")
        # Passes run on whichever executor thread is free: a pool left on each would
        # slow every pass (workers/omp.py), so this thread's goes with its pass.
        release_openmp_pool()
        return [row.tobytes() for row in rows]

    async def embed(self, texts: list[str]) -> tuple[Vectors, int]:
        """The vectors of ``texts``, in order, and their tokens; raises
        ContextLengthExceeded at once, before any compute, for a text too long."""
        counts = await asyncio.to_thread(self.count, texts)
        for i, n in enumerate(counts):
            if n > self.context_length:
                raise ContextLengthExceeded(
                    f"input {i} has {n} tokens; this model's maximum is {self.context_length}")
        if self._closed:
            raise RuntimeError("the embedder is closed")
        waiting = _Waiting(list(texts), asyncio.get_running_loop().create_future(),
                           [None] * len(texts))
        self._queue.append(waiting)
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._drain_queue())
        await waiting.future
        return pack(waiting.vectors, self.dims), sum(counts)

    async def _drain_queue(self) -> None:
        """Forward passes while texts wait, each over up to ``max_batch`` of them."""
        while self._queue:
            taken: list[tuple[_Waiting, int]] = []
            for waiting in list(self._queue):
                while waiting.taken < len(waiting.texts) and len(taken) < self.max_batch:
                    taken.append((waiting, waiting.taken))
                    waiting.taken += 1
                if waiting.taken == len(waiting.texts):
                    self._queue.remove(waiting)
                if len(taken) >= self.max_batch:
                    break
            self.passes += 1
            try:
                rows = await asyncio.to_thread(self.forward, [w.texts[i] for w, i in taken])
            except Exception as exc:  # noqa: BLE001 - fails the requests in this pass only
                log.exception("embedding pass failed")
                for waiting in {id(w): w for w, _ in taken}.values():
                    if waiting in self._queue:
                        self._queue.remove(waiting)
                    if not waiting.future.done():
                        waiting.future.set_exception(exc)
                continue
            for (waiting, i), row in zip(taken, rows, strict=True):
                waiting.vectors[i] = row
                waiting.done += 1
                if waiting.done == len(waiting.texts) and not waiting.future.done():
                    waiting.future.set_result(None)

    async def stream_async(self, request: GenerationRequest,
                           should_stop: Callable[[], bool] | None = None) -> AsyncIterator[Step]:
        """An embeddings model generates no text: a chat or completion job sent to it
        fails (as an engine fault of that job alone)."""
        raise ValueError(f"{self.name} is an embeddings model; it does not generate text")
        yield  # pragma: no cover - makes this an async generator

    def close(self) -> None:
        """Requests still waiting end with an error."""
        self._closed = True
        for waiting in self._queue:
            if not waiting.future.done():
                waiting.future.get_loop().call_soon_threadsafe(
                    waiting.future.set_exception, RuntimeError("the embedder closed"))
        self._queue.clear()
