"""The echo engine: a model that answers with the words of its prompt.

It exists to measure and test the network around the model: a job served by
it takes the whole real path (API, ledger, log, queue, lease, replies,
signing, settlement) while its generation costs next to nothing, so what a
benchmark times is inferbus itself. It needs no torch model and no weights.

A model directory is an echo model when its ``config.json`` says
``"model_type": "inferbus-echo"`` (``write_echo_model`` makes one). A token is
a whitespace-separated word: the output is the words of the last message (or
of the prompt), up to ``max_tokens``, each streamed as its own step.

It is a :class:`~workers.generation.Generator`, the port the worker runs jobs
through, answering from the event loop itself: there is no compute to hand to
a thread.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import AsyncIterator, Callable

from workers.generation import ContextLengthExceeded, GenerationRequest, Step

MODEL_TYPE = "inferbus-echo"
CONTEXT_LENGTH = 8192


def is_echo_model(path: Path) -> bool:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError):
        return False


def write_echo_model(path: Path, context_length: int = CONTEXT_LENGTH) -> Path:
    """Make ``path`` an echo model directory; returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(
        {"model_type": MODEL_TYPE, "max_position_embeddings": context_length}))
    return path


class EchoEngine:
    """Echoes prompts: a :class:`~workers.generation.Generator`."""

    device = "cpu"

    def __init__(self, name: str, context_length: int = CONTEXT_LENGTH) -> None:
        self.name, self.context_length = name, context_length

    @classmethod
    def load(cls, path: Path, name: str | None = None) -> "EchoEngine":
        config = json.loads((Path(path) / "config.json").read_text())
        return cls(name or Path(path).name,
                   int(config.get("max_position_embeddings", CONTEXT_LENGTH)))

    def stream_async(self, request: GenerationRequest,
                     should_stop: Callable[[], bool] | None = None) -> AsyncIterator[Step]:
        """The request's words, one Step each; raises ContextLengthExceeded at once."""
        source = request.messages[-1]["content"] if request.kind == "chat" else request.prompt
        prompt = sum(len(str(m.get("content") or "").split()) for m in request.messages) \
            if request.kind == "chat" else len((request.prompt or "").split())
        wanted = request.sampling.max_tokens
        if prompt + wanted > self.context_length:
            raise ContextLengthExceeded(
                f"this model's context length is {self.context_length} tokens, but "
                f"{prompt + wanted} were requested ({prompt} in the prompt + {wanted} "
                f"max_tokens)")
        done = len(request.continuation.split())
        words = str(source or "").split()[done:wanted]
        return _steps(words, prompt, done, wanted, should_stop or (lambda: False))

    def close(self) -> None:
        """Nothing to stop: no thread, no model."""


async def _steps(words: list[str], prompt: int, done: int, wanted: int,
                 should_stop: Callable[[], bool]) -> AsyncIterator[Step]:
    count = done
    for i, word in enumerate(words):
        count += 1
        last = i == len(words) - 1
        reason = ("length" if count >= wanted else "stop") if last else None
        yield Step(text=("" if count == 1 else " ") + word, completion_tokens=count,
                   prompt_tokens=prompt, finish_reason=reason)
        if reason is None and should_stop():
            yield Step(text="", completion_tokens=count, prompt_tokens=prompt,
                       finish_reason="stop")
            return
    if not words:
        yield Step(text="", completion_tokens=count, prompt_tokens=prompt,
                   finish_reason="length" if count >= wanted else "stop")
