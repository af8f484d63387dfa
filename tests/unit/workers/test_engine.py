"""The engine's decode loop, on a tiny random-weight Llama (see tests/tiny_model.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from bus.events import Sampling
from tests.tiny_model import build_tiny_model
from workers.engine import Engine
from workers.generation import ContextLengthExceeded, GenerationRequest, Step

CHAT = ({"role": "user", "content": "What is the capital of France?"},)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine.load(model_dir, "tiny")


def chat(**sampling) -> GenerationRequest:
    return GenerationRequest(kind="chat", messages=CHAT, prompt=None, sampling=Sampling(**sampling))


def completion(prompt: str, **sampling) -> GenerationRequest:
    return GenerationRequest(kind="completion", messages=None, prompt=prompt,
                             sampling=Sampling(**sampling))


def run(engine: Engine, request: GenerationRequest, **kw) -> tuple[str, list[Step]]:
    steps = list(engine.generate(request, **kw))
    return "".join(s.text for s in steps), steps


def greedy_reference(engine: Engine, request: GenerationRequest, n: int) -> list[int]:
    """Greedy ids the slow way (full forward every step, no KV cache)."""
    ids = engine._encode(request)
    prompt_len = len(ids)
    with torch.inference_mode():
        for _ in range(n):
            logits = engine.model(input_ids=torch.tensor([ids])).logits[0, -1]
            ids.append(int(torch.argmax(logits)))
    return ids[prompt_len:]


def decode(engine: Engine, ids: list[int]) -> str:
    return engine.tokenizer.decode(ids, skip_special_tokens=True,
                                   clean_up_tokenization_spaces=False)


def prompt_tokens(engine: Engine, request: GenerationRequest) -> int:
    """The prompt's tokens as the engine counts them (a chat's template included)."""
    return engine.sequence(request).n_prompt


def test_engine_reads_context_length_and_device_from_the_model(engine):
    assert engine.name == "tiny"
    assert engine.context_length == 512
    assert engine.device == "cpu"


def test_greedy_tokens_match_a_no_cache_reference_and_texts_concatenate_to_their_decode(engine):
    request = chat(max_tokens=40, temperature=0)
    text, steps = run(engine, request)
    ids = greedy_reference(engine, request, 40)
    assert text == decode(engine, ids)


def test_every_step_but_the_last_holds_back_unfinished_characters(engine):
    # Random byte-level output is full of partial UTF-8 sequences.
    for seed in range(5):
        _, steps = run(engine, completion("héllo 東京", max_tokens=40, temperature=1.0, seed=seed))
        assert not any(s.text.endswith("\ufffd") for s in steps[:-1])


def test_max_tokens_is_respected_with_finish_reason_length(engine):
    _, steps = run(engine, chat(max_tokens=7, temperature=0))
    assert [s.completion_tokens for s in steps] == [1, 2, 3, 4, 5, 6, 7]
    assert [s.finish_reason for s in steps] == [None] * 6 + ["length"]


def test_same_seed_gives_same_output_and_other_seeds_differ(engine):
    a, _ = run(engine, chat(max_tokens=30, temperature=1.0, seed=42))
    b, _ = run(engine, chat(max_tokens=30, temperature=1.0, seed=42))
    others = {run(engine, chat(max_tokens=30, temperature=1.0, seed=s))[0] for s in range(3)}
    assert a == b
    assert len(others | {a}) > 1


def test_temperature_zero_is_deterministic_and_ignores_the_seed(engine):
    outputs = {run(engine, chat(max_tokens=20, temperature=0, seed=s))[0] for s in (None, 1, 2)}
    assert len(outputs) == 1


def test_tiny_top_p_keeps_only_the_most_likely_token(engine):
    greedy, _ = run(engine, chat(max_tokens=20, temperature=0))
    nucleus, _ = run(engine, chat(max_tokens=20, temperature=1.5, top_p=1e-6, seed=3))
    assert nucleus == greedy


def test_stop_string_truncates_the_output_and_finishes_with_stop(engine):
    full, _ = run(engine, chat(max_tokens=40, temperature=0))
    start = next(i for i in range(5, len(full) - 2) if "\ufffd" not in full[i:i + 3])
    stop = full[start:start + 3]
    text, steps = run(engine, chat(max_tokens=40, temperature=0, stop=("never-seen", stop)))
    assert text == full[:full.index(stop)]
    assert steps[-1].finish_reason == "stop"
    assert steps[-1].completion_tokens < 40


def test_eos_token_ends_with_stop_and_is_neither_emitted_nor_counted(model_dir):
    engine = Engine.load(model_dir, "tiny")
    request = chat(max_tokens=30, temperature=0)
    ids = greedy_reference(engine, request, 30)
    eos = ids[6]
    engine.eos_token_ids = frozenset({eos})
    text, steps = run(engine, request)
    first = ids.index(eos)
    assert text == decode(engine, ids[:first])
    assert (steps[-1].finish_reason, steps[-1].completion_tokens) == ("stop", first)


def test_should_stop_ends_the_generation_early(engine):
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3  # polled once before the prefill, then after every step

    _, steps = run(engine, chat(max_tokens=50, temperature=0), should_stop=should_stop)
    assert (steps[-1].finish_reason, steps[-1].completion_tokens) == ("stop", 3)


def test_should_stop_before_the_first_token_generates_nothing(engine):
    text, steps = run(engine, chat(max_tokens=50, temperature=0), should_stop=lambda: True)
    assert text == "" and len(steps) == 1
    assert (steps[0].finish_reason, steps[0].completion_tokens) == ("stop", 0)


def test_context_length_exceeded_is_raised_before_any_compute(engine):
    used = prompt_tokens(engine, chat(max_tokens=1))
    with pytest.raises(ContextLengthExceeded, match=rf"512.*{used}"):
        engine.generate(chat(max_tokens=513 - used))
    engine.generate(chat(max_tokens=512 - used))  # exactly fits: no error


def test_usage_counts_prompt_tokens_with_the_template_and_every_generated_token(engine):
    templated = engine.tokenizer.apply_chat_template(list(CHAT), add_generation_prompt=True,
                                                     tokenize=False)
    expected = len(engine.tokenizer(templated, add_special_tokens=False)["input_ids"])
    _, steps = run(engine, chat(max_tokens=5, temperature=0))
    assert prompt_tokens(engine, chat(max_tokens=5)) == expected
    assert {s.prompt_tokens for s in steps} == {expected}
    assert steps[-1].completion_tokens == 5


def test_completion_prompt_is_encoded_plainly(engine):
    prompt = "the quick brown fox"
    request = completion(prompt, max_tokens=3, temperature=0)
    assert prompt_tokens(engine, request) == len(engine.tokenizer(prompt)["input_ids"])
    text, steps = run(engine, request)
    assert steps[-1].finish_reason == "length"


def test_request_without_its_input_is_rejected():
    with pytest.raises(ValueError):
        GenerationRequest(kind="chat", messages=None, prompt="x", sampling=Sampling(max_tokens=1))
    with pytest.raises(ValueError):
        GenerationRequest(kind="completion", messages=None, prompt=None,
                          sampling=Sampling(max_tokens=1))


def resumed(request: GenerationRequest, delivered: str) -> GenerationRequest:
    return dataclasses.replace(request, continuation=delivered)


def test_continuation_goes_on_from_the_delivered_text_and_counts_its_tokens(engine):
    request, delivered = chat(max_tokens=30, temperature=0), "The capital of France is"
    done = engine.tokenizer(delivered, add_special_tokens=False)["input_ids"]
    # Reference: greedy on the prompt followed by the delivered text's tokens.
    ids = engine._encode(request) + done
    with torch.inference_mode():
        for _ in range(30 - len(done)):
            ids.append(int(torch.argmax(engine.model(input_ids=torch.tensor([ids])).logits[0, -1])))
    rest, steps = run(engine, resumed(request, delivered))
    assert delivered + rest == decode(engine, ids[len(engine._encode(request)):])
    assert steps[-1].completion_tokens == 30 and steps[-1].finish_reason == "length"
    assert steps[-1].prompt_tokens == prompt_tokens(engine, request)


def test_continuation_that_already_fills_max_tokens_generates_nothing(engine):
    request = chat(max_tokens=3, temperature=0)
    rest, steps = run(engine, resumed(request, "The capital of France is Paris"))
    assert rest == "" and [(s.completion_tokens, s.finish_reason) for s in steps] == \
        [(3, "length")]


def test_engine_loads_in_the_dtype_asked_for(model_dir):
    engine = Engine.load(model_dir, "tiny", dtype="bfloat16")
    assert engine.model.dtype == torch.bfloat16
    assert engine.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2  # K+V, 2 layers, 2 heads of 16, bf16
    _, steps = run(engine, chat(max_tokens=5, temperature=0))
    assert (steps[-1].completion_tokens, steps[-1].finish_reason) == (5, "length")
