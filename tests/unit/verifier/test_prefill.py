"""The prefill judge, on the tiny random-weight Llama of tests/tiny_model.py.

Honest outputs are made by the real ``Engine.generate``. The tiny model as built
writes lone UTF-8 bytes and special tokens at most steps, which decode to U+FFFD
or to nothing: text that no re-tokenization can read back into the ids that made
it, and a random model's next tokens hang on every id before them. No trained
model writes so, so here its output head is limited to whole words (tokens that
re-tokenize to themselves): the text then reads back into the very ids made,
which is what a trained model's text does but for a few positions.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import torch

from bus.events import ChatMessage, JobSubmitted, Sampling
from tests.tiny_model import build_tiny_model
from verifier.prefill import PrefillJudge, job_request
from workers.engine import Engine

PROMPTS = ("What is the capital of France?", "the quick brown fox", "héllo wörld café",
           "every worker streams tokens", "Tell me about 東京 🙂")


class WholeWords(torch.nn.Module):
    """An output head that can only write the tokens ``allowed``."""

    def __init__(self, head: torch.nn.Module, allowed: list[int], vocab: int) -> None:
        super().__init__()
        self.head = head
        mask = torch.full((vocab,), -1e4, dtype=head.weight.dtype)
        mask[allowed] = 0
        self.register_buffer("mask", mask)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden) + self.mask


def words_only(path, dtype: str | None = None) -> Engine:
    engine = Engine.load(path, path.name, dtype=dtype)
    tok = engine.tokenizer
    words = [i for i in range(len(tok))
             if (s := tok.decode([i]))[:1] == " " and s[1:].isalpha()
             and tok(s, add_special_tokens=False)["input_ids"] == [i]]
    engine.model.lm_head = WholeWords(engine.model.lm_head, words, len(tok))
    return engine


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "tiny", seed=0), build_tiny_model(root / "other", seed=1)


@pytest.fixture(scope="module")
def engine(dirs):
    return words_only(dirs[0])


@pytest.fixture(scope="module")
def judge(engine):
    return PrefillJudge(engine)


def job(i: int, chat: bool = True, **sampling) -> JobSubmitted:
    prompt = PROMPTS[i % len(PROMPTS)]
    return JobSubmitted(
        job_id=f"job-{i}", account="acct", key_id="key", model="tiny",
        kind="chat" if chat else "completion",
        messages=(ChatMessage(role="user", content=prompt),) if chat else None,
        prompt=None if chat else prompt, sampling=Sampling(**sampling), zone="eu",
        route="zone", deadline=datetime.now(timezone.utc) + timedelta(minutes=5))


def generate(engine: Engine, j: JobSubmitted) -> tuple[str, str]:
    steps = list(engine.generate(job_request(j)))
    return "".join(s.text for s in steps), steps[-1].finish_reason


def test_greedy_outputs_of_the_model_pass(engine, judge):
    for i in range(6):
        j = job(i, chat=i % 2 == 0, max_tokens=40, temperature=0)
        verdict = judge.check(j, *generate(engine, j))
        assert verdict.passed, verdict
        assert json.loads(verdict.evidence)["implausible"] == 0


@pytest.mark.parametrize("temperature,top_p", [(0.7, 1.0), (1.0, 1.0), (0.7, 0.9), (1.0, 0.9)])
def test_seeded_samples_of_the_model_pass(engine, judge, temperature, top_p):
    for seed in range(8):
        j = job(seed, chat=seed % 2 == 0, max_tokens=40, temperature=temperature,
                top_p=top_p, seed=seed)
        verdict = judge.check(j, *generate(engine, j))
        assert verdict.passed, verdict


def test_outputs_made_in_bfloat16_pass_a_float32_judge(dirs, judge):
    # Another GPU, another dtype: logits move by tenths, near-ties flip.
    bf16 = words_only(dirs[0], dtype="bfloat16")
    for i, temperature in enumerate([0, 0, 0.7, 1.0]):
        j = job(i, max_tokens=40, temperature=temperature, seed=i)
        verdict = judge.check(j, *generate(bf16, j))
        assert verdict.passed, verdict


@pytest.mark.parametrize("temperature,top_p", [(0, 1.0), (0.7, 1.0), (1.0, 1.0), (1.0, 0.9)])
def test_another_models_outputs_fail(dirs, judge, temperature, top_p):
    other = words_only(dirs[1])
    for seed in range(4):
        j = job(seed, max_tokens=40, temperature=temperature, top_p=top_p, seed=seed)
        verdict = judge.check(j, *generate(other, j))
        assert not verdict.passed, verdict


@pytest.mark.parametrize("temperature", [0, 0.7, 1.0])
def test_the_prompts_words_echoed_fail(judge, temperature):
    j = job(1, chat=False, max_tokens=40, temperature=temperature)
    verdict = judge.check(j, " the quick brown fox jumps over a lazy dog" * 2, "stop")
    assert not verdict.passed, verdict


def test_an_output_longer_than_max_tokens_fails(engine, judge):
    text, _ = generate(engine, job(0, max_tokens=40, temperature=0))
    verdict = judge.check(job(0, max_tokens=20, temperature=0), text, "length")
    assert not verdict.passed
    assert "max_tokens is 20" in verdict.reason


def test_an_output_cut_inside_a_token_by_a_stop_string_passes(engine, judge):
    j = job(0, max_tokens=40, temperature=0)
    text, _ = generate(engine, j)
    cut = text.index(" ", 10) + 2  # a word's first letter: its token is cut
    verdict = judge.check(j, text[:cut], "stop")
    assert verdict.passed, verdict


def test_an_empty_output_passes(judge):
    verdict = judge.check(job(0, max_tokens=10, temperature=0), "", "stop")
    assert verdict.passed


def test_a_job_that_does_not_fit_the_context_fails(judge):
    verdict = judge.check(job(0, max_tokens=510, temperature=0), " the fox", "length")
    assert not verdict.passed
    assert "does not fit" in verdict.reason


def test_evidence_is_compact_json_with_the_worst_positions(judge):
    j = job(1, chat=False, max_tokens=200, temperature=0)
    verdict = judge.check(j, " the quick brown fox jumps over a lazy dog" * 15, "length")
    evidence = json.loads(verdict.evidence)
    assert len(verdict.evidence) < 1000
    assert evidence["tokens"] >= 100 and evidence["implausible"] > 10
    assert len(evidence["worst"]) == 5
    assert all(len(w) == 3 and w[1] > 1 for w in evidence["worst"])  # [position, rank, logprob]


def test_a_judge_confirms_its_model_only_when_honest_outputs_read_back(dirs, engine):
    from verifier.judges import confirms_itself
    assert confirms_itself(PrefillJudge(engine))
    # The raw random model writes lone bytes and special tokens: its text does not
    # read back into what it made, so its judge must not convict anyone.
    assert not confirms_itself(PrefillJudge(Engine.load(dirs[0], "raw")))
