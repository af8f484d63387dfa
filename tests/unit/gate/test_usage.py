"""The gate recounts a job's prompt as the engine counted it: a node is billed
for the same tokens whichever side counts (a tiny random-weight Llama)."""
from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timezone

import pytest

from bus.events import ChatMessage, JobSubmitted, Sampling
from gate.usage import Counters, WordCounter
from tests.tiny_model import build_tiny_model
from workers.echo import write_echo_model
from workers.engine import Engine
from workers.generation import GenerationRequest

CHAT = (ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="What is the capital of France?"))


def job(**kw) -> JobSubmitted:
    return JobSubmitted(job_id="j", account="-", key_id="-", model="tiny", sampling=Sampling(
        max_tokens=4), zone="eu", route="zone", deadline=datetime.now(timezone.utc), **kw)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    build_tiny_model(root / "tiny")
    write_echo_model(root / "echo")
    return root


@pytest.mark.parametrize("submitted", [job(kind="chat", messages=CHAT),
                                       job(kind="completion", prompt="Once upon a time"),
                                       job(kind="completion", prompt="")])
def test_the_gate_counts_a_prompt_as_the_engine_does(models, submitted):
    engine = Engine.load(models / "tiny", "tiny")
    request = GenerationRequest(
        kind=submitted.kind, prompt=submitted.prompt, sampling=submitted.sampling,
        messages=tuple(m.model_dump() for m in submitted.messages) if submitted.messages
        else None)
    assert Counters(models).get("tiny").prompt(submitted) == len(engine._encode(request))


def test_echo_models_count_words_and_unknown_models_cannot_be_counted(models):
    counters = Counters(models)
    assert isinstance(counters.get("echo"), WordCounter)
    assert counters.get("echo").output("a b  c\n") == 3
    assert counters.get("missing") is None


def test_results_arriving_together_load_a_models_tokenizer_once(models, monkeypatch):
    """Two threads importing transformers' tokenizer at once fail; one load serves all."""
    counters, loads, lock = Counters(models), [], threading.Lock()
    real = Counters._load

    def slow_load(self, model, path=None):
        with lock:
            loads.append(model)
        time.sleep(0.05)  # the window in which other results arrive
        return real(self, model, path)
    monkeypatch.setattr(Counters, "_load", slow_load)

    async def eight_at_once():
        return await asyncio.gather(*(counters.ready("tiny") for _ in range(8)))
    got = asyncio.run(eight_at_once())
    assert loads == ["tiny"] and all(c is got[0] and c is not None for c in got)
