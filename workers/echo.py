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

The new sampling fields, as a model that is certain of each word:
``logprobs`` gives each echoed word logprob 0.0, its top alternatives the word
itself first, then other words of the prompt (then ``<k>`` fillers) at the
floor -1e4; under a grammar the echo stands if it follows the grammar, else
the answer is the grammar's smallest instance (``workers.echo_grammar``: ``{}``
for json_object, a schema's required keys with the shortest values), one step. logit_bias,
penalties and ignore_eos change nothing: the echo has no logits to bias (and
``ignore_eos`` has no EOS to ignore: it echoes what it has).
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import AsyncIterator, Callable

from bus.sampling import TokenLogprob, TopLogprob
from workers.echo_grammar import follows, smallest_instance
from workers.generation import LOGPROB_FLOOR, ContextLengthExceeded, GenerationRequest, Step

MODEL_TYPE = "inferbus-echo"
CONTEXT_LENGTH = 8192
# A grammar's walk stops at 64 bytes per max_tokens, and at 4 KiB: it runs on the event loop.
GRAMMAR_BYTES_PER_TOKEN, MAX_INSTANCE_BYTES = 64, 4096


def instance_limit(max_tokens: int) -> int:
    """The most bytes of a grammar's instance the echo answers with."""
    return min(GRAMMAR_BYTES_PER_TOKEN * max_tokens, MAX_INSTANCE_BYTES)


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
        grammar = request.sampling.grammar
        if grammar is not None and not follows(grammar, " ".join(str(source or "").split()[
                :wanted])):
            return _instance(request, prompt)
        top = request.sampling.logprobs
        return _steps(words, prompt, done, wanted, should_stop or (lambda: False),
                      None if top is None else _Certain(str(source or "").split(), top))

    def close(self) -> None:
        """Nothing to stop: no thread, no model."""


class _Certain:
    """Logprobs of a model certain of each word: the word at 0.0, ``top`` alternatives."""

    def __init__(self, vocabulary: list[str], top: int) -> None:
        self.vocabulary, self.top = list(dict.fromkeys(vocabulary)), top

    def __call__(self, text: str) -> tuple[TokenLogprob, ...]:
        others, word = [], text.strip()
        for w in self.vocabulary:  # the first few only: a long prompt has thousands
            if len(others) == self.top:
                break
            if w != word:
                others.append(w)
        others += [f"<{k}>" for k in range(self.top)]
        alternatives = [text, *others][:self.top]
        return (TokenLogprob(token=text[:256], logprob=0.0, bytes=tuple(text.encode()[:256]),
                             top_logprobs=tuple(
                                 TopLogprob(token=w[:256], bytes=tuple(w.encode()[:256]),
                                            logprob=0.0 if i == 0 else LOGPROB_FLOOR)
                                 for i, w in enumerate(alternatives))),)


async def _instance(request: GenerationRequest, prompt: int) -> AsyncIterator[Step]:
    """A grammar's smallest instance, as one step (a word, to the echo's count)."""
    sampling = request.sampling
    text, complete = smallest_instance(sampling.grammar, instance_limit(sampling.max_tokens))
    if request.continuation and text.startswith(request.continuation):  # resumed: the rest
        text = text[len(request.continuation):]
    count = min(max(1, len(text.split())), sampling.max_tokens)
    logprobs = () if sampling.logprobs is None else _Certain([], sampling.logprobs)(text)
    yield Step(text=text, completion_tokens=count, prompt_tokens=prompt,
               finish_reason="stop" if complete else "length", logprobs=logprobs)


async def _steps(words: list[str], prompt: int, done: int, wanted: int,
                 should_stop: Callable[[], bool],
                 certain: _Certain | None) -> AsyncIterator[Step]:
    count = done
    for i, word in enumerate(words):
        count += 1
        last = i == len(words) - 1
        reason = ("length" if count >= wanted else "stop") if last else None
        text = ("" if count == 1 else " ") + word
        yield Step(text=text, completion_tokens=count, prompt_tokens=prompt,
                   finish_reason=reason, logprobs=certain(text) if certain else ())
        # A model's step is never instant: the loop's other tasks (the node's pings,
        # its other jobs) run between two, as they do beside a real engine.
        await asyncio.sleep(0)
        if reason is None and should_stop():
            yield Step(text="", completion_tokens=count, prompt_tokens=prompt,
                       finish_reason="stop")
            return
    if not words:
        yield Step(text="", completion_tokens=count, prompt_tokens=prompt,
                   finish_reason="length" if count >= wanted else "stop")
