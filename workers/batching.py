"""Continuous batching: concurrent requests on one engine share each decode step.

A ``Batcher`` owns one thread that runs every forward pass of its engine.
Between two decode steps it admits waiting requests (prefilled together in a
pass of their own, their first tokens sampled and streamed, then their caches
joined to the batch, ``workers.kvbatch``) and drops the ones that finished or were stopped,
at once. Each decode step is one forward pass of one token per sequence; every
sequence then samples its own token with its own sampler (temperature, top_p,
seed), its text stream cuts at its own stop strings, and its ``Step`` goes to
its caller as soon as it is made. The per-request logic is the same
``workers.decoding.Sequence`` the single-stream ``Engine.generate`` drives.

Limits: at most ``max_batch`` sequences decode together, and a request joins
only while the batch's padded KV cache, grown to its worst case (every row at
the longest row's length plus the most tokens any row may still add), stays
within ``kv_budget_bytes``; a request that does not fit waits, in order. A
lone request always runs. A model whose cache cannot be stacked (sliding
windows, linear attention; probed with one token at start) runs one sequence
at a time.

On CUDA, a static cache with CUDA graphs (or ``torch.compile``) would cut the
per-step launch cost further; it is not wired in: the dynamic cache here grows
by one column per step, which those need fixed. See docs/design-notes.md.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator

import torch

from workers.decoding import Sequence, Step
from workers.engine import Engine, GenerationRequest
from workers.handoff import deliver, drain, drain_async, either
from workers.kvbatch import PaddedBatch, batchable

log = logging.getLogger("inferbus.worker")
Emit = Callable[[Step | BaseException], None]
# Padded prompt tokens prefilled between two decode steps (at least one request's): a
# burst of long prompts must not stall the sequences already streaming for long.
PREFILL_TOKENS_PER_TURN = 4096


@dataclass(eq=False)
class _Slot:
    """A request in the batcher: its decode state and where its steps go."""

    seq: Sequence
    emit: Emit

    def send(self, item: Step | BaseException) -> None:
        try:
            self.emit(item)
        except Exception:  # noqa: BLE001 - a gone caller must not stop the others
            log.exception("a step could not be delivered; the sequence is dropped")
            self.seq.finished = True


class Batcher:
    """Runs the requests submitted to it in one continuously batched decode loop.

    Thread-safe: ``submit`` (callback), ``stream`` (blocking iterator) and
    ``stream_async`` (async iterator) may be called from any thread. Each raises
    ContextLengthExceeded at once, before the request is queued.
    """

    def __init__(self, engine: Engine, max_batch: int = 32,
                 kv_budget_bytes: int = 2 << 30) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.engine, self.max_batch, self.kv_budget_bytes = engine, max_batch, kv_budget_bytes
        if max_batch > 1 and not batchable(engine.forward([0], None)[1]):
            log.warning("%s: its KV cache cannot be stacked; one sequence at a time", engine.name)
            self.max_batch = 1
        self._waiting: deque[_Slot] = deque()
        self._rows: list[_Slot] = []  # in the order of the batch's rows
        self._batch = PaddedBatch()
        self._wake = threading.Condition()
        self._closed = False
        # Steps for event loops, made during this turn: (loop, queue, gone, step).
        self._outbox: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, threading.Event,
                                 Step | BaseException]] = []
        # Counters for benchmarks and tests: decode passes, tokens they made, widest
        # decode pass, widest joint prefill.
        self.stats = {"decode_steps": 0, "decoded_tokens": 0, "max_rows": 0,
                      "max_prefill_rows": 0}
        self._thread = threading.Thread(target=self._run, name="inferbus-batcher", daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        """Sequences decoding now (not counting those waiting to join)."""
        return len(self._rows)

    def submit(self, request: GenerationRequest, emit: Emit,
               should_stop: Callable[[], bool] | None = None) -> None:
        """Queue ``request``; each of its Steps (the last with a finish_reason), or the
        exception that ended it, is passed to ``emit`` on the batcher's thread."""
        slot = _Slot(self.engine.sequence(request, should_stop), emit)
        with self._wake:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(slot)
            self._wake.notify()

    def stream(self, request: GenerationRequest,
               should_stop: Callable[[], bool] | None = None) -> Iterator[Step]:
        """``Engine.generate``'s contract, batched: a blocking iterator of Steps.
        Closing it early stops the sequence between two tokens."""
        items: queue.SimpleQueue[Step | BaseException] = queue.SimpleQueue()
        gone = threading.Event()
        self.submit(request, items.put, either(gone.is_set, should_stop))
        return drain(items.get, gone)

    def stream_async(self, request: GenerationRequest,
                     should_stop: Callable[[], bool] | None = None) -> AsyncIterator[Step]:
        """As ``stream``, for an event loop: call it from a coroutine. Steps reach the
        loop once per batcher turn, all streams' together (one wake-up, not one per
        token and stream)."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Step | BaseException] = asyncio.Queue()
        gone = threading.Event()
        self.submit(request, lambda item: self._outbox.append((loop, items, gone, item)),
                    either(gone.is_set, should_stop))
        return drain_async(items, gone)

    def close(self) -> None:
        """Stop the thread; requests still running or waiting end with an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    # The batcher's thread: everything below runs there only.

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._waiting or self._rows):
                    self._wake.wait()
                if self._closed:
                    break
                joining = self._admit()
                # Cancelled while waiting for room: leaves at once (start() ends it).
                stopped = [s for s in self._waiting if s.seq.should_stop()]
                for slot in stopped:
                    self._waiting.remove(slot)
                joining += stopped
            try:
                self._join(joining)
                if self._rows:
                    self._decode()
            except Exception as exc:  # noqa: BLE001 - the batch cannot go on; its callers learn why
                log.exception("decode step failed")
                self._fail(list({*self._rows, *(s for s in joining if not s.seq.finished)}), exc)
                self._rows, self._batch = [], PaddedBatch()
            self._post()
        self._fail([*self._rows, *self._waiting], RuntimeError("the batcher was closed"))
        self._post()

    def _post(self) -> None:
        """Hand this turn's steps to their event loops, one call per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for loop, items, gone, item in self._outbox:
            by_loop.setdefault(loop, []).append((items, gone, item))
        self._outbox.clear()
        for loop, posts in by_loop.items():
            try:
                loop.call_soon_threadsafe(deliver, posts)
            except RuntimeError:  # the loop is closed: nobody reads these streams any more
                for _, gone, _ in posts:
                    gone.set()

    @staticmethod
    def _fail(slots: list[_Slot], exc: BaseException) -> None:
        for slot in slots:
            slot.send(exc)

    def _admit(self) -> list[_Slot]:
        """Waiting requests that may join now, in order (called under the lock)."""
        joining: list[_Slot] = []
        width = 0  # of the joint prefill: its longest prompt
        while self._waiting and len(self._rows) + len(joining) < self.max_batch:
            slot = self._waiting[0]
            wider = max(width, len(slot.seq.input_ids))
            if joining and (len(joining) + 1) * wider > PREFILL_TOKENS_PER_TURN:
                break
            if (self._rows or joining) and not self._fits([*joining, slot]):
                break
            joining.append(self._waiting.popleft())
            width = wider
        return joining

    def _fits(self, joining: list[_Slot]) -> bool:
        """Whether the batch with ``joining`` stays in budget at its worst case."""
        seqs = [s.seq for s in (*self._rows, *joining)]
        length = max([self._batch.length] + [len(s.input_ids) for s in seqs])
        worst = len(seqs) * (length + max(s.remaining for s in seqs))
        return worst * self.engine.kv_bytes_per_token <= self.kv_budget_bytes

    @torch.inference_mode()
    def _join(self, joining: list[_Slot]) -> None:
        """Prefill the joining requests in one left-padded pass, stream each one's first
        token, and add to the batch the caches of those that go on."""
        for slot in joining:
            if (step := slot.seq.start()) is not None:  # nothing to generate
                slot.send(step)
        joining = [s for s in joining if not s.seq.finished]
        if not joining:
            return
        inputs = PaddedBatch.prefill_inputs([s.seq.input_ids for s in joining],
                                            self.engine.device)
        self.stats["max_prefill_rows"] = max(self.stats["max_prefill_rows"], len(joining))
        try:
            out = self.engine.model(input_ids=inputs["input_ids"], use_cache=True,
                                    attention_mask=inputs["model_mask"],
                                    position_ids=inputs["position_ids"], logits_to_keep=1)
        except Exception as exc:  # noqa: BLE001 - fails the joining requests only
            log.exception("prefill failed")
            self._fail(joining, exc)
            return
        group = PaddedBatch(out.past_key_values, inputs["attention_mask"])
        logits = out.logits[:, -1].float()
        tokens = self._sample(joining, logits)
        going_on = [i for i, slot in enumerate(joining) if self._after_token(slot, tokens[i])]
        group.keep(going_on)
        self._batch.extend(group)
        self._rows.extend(joining[i] for i in going_on)

    @torch.inference_mode()
    def _decode(self) -> None:
        """One forward pass for every row, then each row's own token and Step."""
        tokens = torch.tensor([[s.seq.last_token] for s in self._rows], dtype=torch.long,
                              device=self.engine.device)
        out = self.engine.model(input_ids=tokens, use_cache=True, logits_to_keep=1,
                                **self._batch.step_inputs())
        self.stats["decode_steps"] += 1
        self.stats["decoded_tokens"] += len(self._rows)
        self.stats["max_rows"] = max(self.stats["max_rows"], len(self._rows))
        tokens = self._sample(self._rows, out.logits[:, -1].float())
        keep = [i for i, slot in enumerate(self._rows) if self._after_token(slot, tokens[i])]
        if len(keep) < len(self._rows):
            self._rows = [self._rows[i] for i in keep]
            self._batch.keep(keep)

    @staticmethod
    def _sample(slots: list[_Slot], logits: torch.Tensor) -> list[int]:
        """Each row's next token by its own sampler; the greedy rows' in one argmax."""
        greedy = logits.argmax(dim=-1).tolist() \
            if any(s.seq.sampler.greedy for s in slots) else None
        return [greedy[i] if s.seq.sampler.greedy else s.seq.sampler(logits[i])
                for i, s in enumerate(slots)]

    def _after_token(self, slot: _Slot, token: int) -> bool:
        """Stream the Step ``token`` makes; whether the sequence goes on."""
        step = slot.seq.advance(token)
        slot.send(step)
        if step.finish_reason is None and (stopped := slot.seq.check_stop()) is not None:
            slot.send(stopped)
        return not slot.seq.finished
