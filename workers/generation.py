"""The port the job runner generates through, and the shapes it speaks.

A :class:`Generator` turns a :class:`GenerationRequest` into a stream of
:class:`Step`s. Two adapters satisfy it: ``workers.batching.Batcher``, the
continuous batcher over a torch ``workers.engine.Engine``, and
``workers.echo.EchoEngine``, the echo model that costs no compute. Which one
a worker runs is decided once, by its composition root (``workers.node``).
Nothing here imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Callable, Literal, Protocol

from bus.sampling import Sampling, TokenLogprob


LOGPROB_FLOOR = -1e4  # a logprob of -inf as reported (bus.sampling's bound: JSON has no -inf)


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: ``messages`` for a chat, ``prompt`` for a completion."""

    kind: Literal["chat", "completion"]
    messages: tuple[dict, ...] | None
    prompt: str | None
    sampling: Sampling
    continuation: str = ""  # output already delivered by an earlier attempt: go on from it

    def __post_init__(self) -> None:
        if self.kind == "chat" and not self.messages:
            raise ValueError("a chat request needs messages")
        if self.kind == "completion" and self.prompt is None:
            raise ValueError("a completion request needs a prompt")


@dataclass(frozen=True)
class Step:
    """One step of a generation.

    ``text`` is the output text new since the previous step (possibly ""); the
    texts of all steps concatenated are the whole output. ``finish_reason`` is
    None until the last step, then "stop" (EOS, a stop string or
    ``should_stop``, a grammar complete) or "length" (``max_tokens`` reached).
    ``logprobs``: the tokens of ``text`` when the request asked for them (a token
    whose text is held back, e.g. half a character, comes with a later Step).
    """

    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str | None
    logprobs: tuple[TokenLogprob, ...] = ()


class InvalidRequest(ValueError):
    """A request this model cannot run as asked: a token id it does not have (raised
    before any compute, like ContextLengthExceeded), a grammar its vocabulary cannot
    follow (raised when the generation meets it)."""


class ContextLengthExceeded(ValueError):
    """The prompt plus ``max_tokens`` does not fit in the model's context."""


class Generator(Protocol):
    """Runs generations for a worker: its model's name, context length and device
    (for heartbeats), and one stream of steps per request."""

    name: str
    context_length: int
    device: str

    def stream_async(self, request: GenerationRequest,
                     should_stop: Callable[[], bool] | None = None) -> AsyncIterator[Step]:
        """The request's Steps, the last with a finish_reason; call it from a
        coroutine. Raises ContextLengthExceeded at once, before any compute.
        ``should_stop`` is polled between tokens; leaving the iterator early
        stops the generation too."""
        ...

    def close(self) -> None:
        """Stop generating; requests still running end with an error."""
        ...
