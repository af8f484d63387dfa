"""Continuous batching: concurrent requests on one engine share each decode step.

A ``Batcher`` owns one thread that runs every forward pass of its engine.
Between two decode steps it admits waiting requests (prefilled together in a
pass of their own, their first tokens sampled and streamed, then their rows
added to the batch) and drops the ones that finished or were stopped, at once.
Each decode step is one forward pass of one token per sequence; every sequence
then samples its own token by its own sampler and logit rules, its text stream
cuts at its own stop strings, and its ``Step`` goes to its caller as soon as it
is made, by the same ``workers.sequence.Sequence`` that ``Engine.generate``
drives. A ``Batcher`` is the job runner's :class:`~workers.generation.Generator`.

The forward passes belong to a decode backend (``workers.decoders``): slots
(CUDA-graphed steps; Llama-family models, by default on CUDA) or padded (any
model). When every row is greedy and the backend ``pipelines``, the next step
is launched before this one's tokens are read back, so the host's per-token
work overlaps the device's step; a row that ended is computed once more and
that extra token dropped.

Limits: at most ``max_batch`` sequences decode together, and a request joins
only while the backend's KV cache at its worst case stays within
``kv_budget_bytes``; one that does not fit waits, in order; a lone request
always runs. See docs/design.md.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import torch

from workers.decoders.backend import Launched
from workers.decoders.factory import pick_decoder
from workers.engine import Engine
from workers.generation import GenerationRequest, Step
from workers.handoff import deliver, steps_until_final, stop_if_any
from workers.omp import release_openmp_pool
from workers.sequence import Sequence, pick_tokens

log = logging.getLogger("inferbus.worker")
Emit = Callable[[Step | BaseException], None]
# Padded prompt tokens prefilled between two decode steps (at least one request's): a
# burst of long prompts must not stall the sequences already streaming for long.
PREFILL_TOKENS_PER_TURN = 4096
SWITCH_INTERVAL_S = 0.0005  # see Batcher.__init__


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

    Thread-safe: ``submit`` (callback) and ``stream_async`` (async iterator) may
    be called from any thread. Each raises ContextLengthExceeded at once, before
    the request is queued.
    """

    def __init__(self, engine: Engine, max_batch: int = 32,
                 kv_budget_bytes: int = 2 << 30, decoder: str = "auto") -> None:
        """``decoder``: "slots", "padded", or "auto" (slots for a Llama-family model on
        CUDA, where graphed steps pay; padded elsewhere)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.engine, self.max_batch, self.kv_budget_bytes = engine, max_batch, kv_budget_bytes
        self.decoder, self.max_batch = pick_decoder(engine, decoder, max_batch, kv_budget_bytes)
        if self.decoder.pipelines:
            # This thread hands the GIL over at every graph launch and device wait; at the
            # default 5 ms switch interval a busy event loop keeps it while the device idles.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._waiting: deque[_Slot] = deque()
        self._rows: list[_Slot] = []  # in the order of the backend's rows
        self._pending: tuple[list[_Slot], Launched] | None = None  # launched, not yet read
        self._wake = threading.Condition()
        self._closed = False
        # Steps for event loops, made during this turn: (loop, queue, gone, step).
        self._outbox: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, threading.Event,
                                 Step | BaseException]] = []
        # For benchmarks and tests: decode passes, their tokens, the widest pass and prefill.
        self.stats = {"decode_steps": 0, "decoded_tokens": 0, "max_rows": 0, "max_prefill_rows": 0}
        # This thread (model load, pick_decoder's probes) holds an OpenMP pool: beside
        # the batcher's, every decode step slows by a fifth or more (workers.omp).
        release_openmp_pool()
        self._thread = threading.Thread(target=self._run, name="inferbus-batcher", daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    @property
    def device(self) -> str:
        return self.engine.device

    def submit(self, request: GenerationRequest, emit: Emit,
               should_stop: Callable[[], bool] | None = None) -> None:
        """Queue ``request``; each of its Steps (the last with a finish_reason), or the
        exception that ended it, is passed to ``emit`` on the batcher's thread."""
        slot = _Slot(self.engine.sequence(request, should_stop), emit)
        with self._wake:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(slot)
        slot.seq.when_ready(self._notify)  # wake the loop when it may join

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify()

    def stream_async(self, request: GenerationRequest,
                     should_stop: Callable[[], bool] | None = None) -> AsyncIterator[Step]:
        """The request's Steps on the calling event loop (call it from a coroutine);
        leaving the iterator early stops the sequence between two tokens. Steps
        reach the loop once per batcher turn, all streams' together (one wake-up,
        not one per token and stream)."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Step | BaseException] = asyncio.Queue()
        gone = threading.Event()
        self.submit(request, lambda item: self._outbox.append((loop, items, gone, item)),
                    stop_if_any(gone.is_set, should_stop))
        return steps_until_final(items, gone)

    def close(self) -> None:
        """Stop the thread; requests still running or waiting end with an error."""
        self._closed = True
        self._notify()
        self._thread.join()

    # The batcher's thread: everything below runs there only.

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._rows or any(  # ready: grammar compiled
                        s.seq.ready or s.seq.should_stop() for s in self._waiting)):
                    # Idle: torch work on another thread meanwhile runs with its pool
                    # alone (workers.omp); the next turn makes a new one.
                    release_openmp_pool()
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
                self._rows, self._pending = [], None
                self.decoder.reset()
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
        """End each of ``slots`` with ``exc``; their rows leave at the next ``keep``."""
        for slot in slots:
            slot.seq.finished = True
            slot.send(exc)

    def _admit(self) -> list[_Slot]:
        """Waiting requests that may join now, in order; one preparing lets others by."""
        joining: list[_Slot] = []
        width = 0  # of the joint prefill: its longest prompt
        while len(self._rows) + len(joining) < self.max_batch:
            if (slot := next((s for s in self._waiting if s.seq.ready), None)) is None:
                break
            wider = max(width, len(slot.seq.input_ids))
            if joining and (len(joining) + 1) * wider > PREFILL_TOKENS_PER_TURN:
                break
            if (self._rows or joining) and not self._fits([*joining, slot]):
                break
            self._waiting.remove(slot)
            joining.append(slot)
            width = wider
        return joining

    def _fits(self, joining: list[_Slot]) -> bool:
        """Whether the batch with ``joining`` stays in the KV budget (the backend's rule)."""
        return self.decoder.fits([s.seq for s in self._rows], [s.seq for s in joining])

    @torch.inference_mode()
    def _join(self, joining: list[_Slot]) -> None:
        """Prefill the joining requests in one pass, stream each one's first token, and
        add to the batch the rows of those that go on."""
        for slot in joining:
            if (step := slot.seq.start()) is not None:  # nothing to generate
                slot.send(step)
        joining = [s for s in joining if not s.seq.finished]
        if not joining:
            return
        self.stats["max_prefill_rows"] = max(self.stats["max_prefill_rows"], len(joining))
        try:
            logits = self.decoder.prefill([s.seq for s in joining])
        except Exception as exc:  # noqa: BLE001 - fails the joining requests only
            log.exception("prefill failed")
            self._fail(joining, exc)
            return
        tokens = self._sample(joining, logits, lambda: logits.argmax(dim=-1).tolist())
        going_on = [i for i, slot in enumerate(joining) if self._after_token(slot, tokens[i])]
        self.decoder.admit(going_on, tokens)
        self._rows.extend(joining[i] for i in going_on)

    @torch.inference_mode()
    def _decode(self) -> None:
        """Launch one forward pass for every row; read back the previous pass's tokens
        meanwhile when pipelining, else this one's: each row's own token and Step."""
        pipelined = self.decoder.pipelines and all(s.seq.fast_greedy for s in self._rows)
        if self._pending is not None and not pipelined:  # a sampled row joined: in step again
            self._read(*self._pending)
            self._pending = None
            if not self._rows:
                return
        rows = list(self._rows)
        launched = self.decoder.launch([s.seq for s in rows])
        self.stats["decode_steps"] += 1
        self.stats["max_rows"] = max(self.stats["max_rows"], len(rows))
        if self._pending is not None:
            self._read(*self._pending)  # while the device runs the pass just launched
        self._pending = rows, launched
        if not (pipelined and self._rows):
            self._pending = None
            self._read(rows, launched)

    def _read(self, rows: list[_Slot], launched: Launched) -> None:
        """Each row's token of a launched pass, its Step, and the rows that go on."""
        live = [(i, slot) for i, slot in enumerate(rows) if not slot.seq.finished]
        tokens = self._sample([slot for _, slot in live], launched.logits, launched.greedy,
                              [i for i, _ in live])
        # Sampled rows' tokens are the next step's inputs (greedy ones are there already).
        # A pass with sampled rows is read before any other, so its rows are still where
        # the pass left them.
        self.decoder.feed({i: tokens[k] for k, (i, slot) in enumerate(live)
                           if not slot.seq.fast_greedy})
        self.stats["decoded_tokens"] += len(live)
        for k, (_, slot) in enumerate(live):
            self._after_token(slot, tokens[k])
        keep = [i for i, slot in enumerate(self._rows) if not slot.seq.finished]
        if len(keep) < len(self._rows):
            self._rows = [self._rows[i] for i in self.decoder.keep(keep)]

    def _sample(self, slots: list[_Slot], logits: torch.Tensor,
                greedy: Callable[[], list[int]], where: list[int] | None = None) -> list[int]:
        """Each slot's next token (``pick_tokens``); one whose pick failed ends with its error."""
        tokens = pick_tokens([s.seq for s in slots], logits, greedy, where)
        for slot, token in zip(slots, tokens):
            if isinstance(token, Exception):
                self._fail([slot], token)
        return [0 if isinstance(t, Exception) else t for t in tokens]

    def _after_token(self, slot: _Slot, token: int) -> bool:
        """Stream the Step ``token`` makes; whether the sequence goes on."""
        if slot.seq.finished:  # its pick failed: it had its error
            return False
        step = slot.seq.advance(token)
        slot.send(step)
        if step.finish_reason is None and (stopped := slot.seq.check_stop()) is not None:
            slot.send(stopped)
        return not slot.seq.finished
