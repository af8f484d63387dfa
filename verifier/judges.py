"""Which judge checks which model's results.

The echo model (``workers/echo.py``) is deterministic: its judge re-runs it and
compares. A Hugging Face model is judged by one prefill of prompt + claimed
output (:mod:`verifier.prefill`, torch loaded only then), once the judge has
confirmed honest outputs of that model, made here, greedy and sampled
(:func:`confirms_itself`): a model whose text does not read back into what it
made (a random-weight test model writing lone bytes) is never judged, since
its honest nodes would fail. A model the verifier has no copy of cannot be
judged here: its checks wait for a verifier that has it.
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from datetime import datetime, timedelta, timezone

from bus.events import ChatMessage, JobSubmitted, Sampling
from bus.model_cache import LocalModels
from bus.model_fetch import service_fetch
from bus.model_store import ModelStore, NotPublished
from verifier.verdict import Judge, Verdict
from workers.echo import instance_limit, is_echo_model
from workers.echo_grammar import follows, smallest_instance
from workers.embedder import is_embedding_model

log = logging.getLogger("inferbus.verifier")


class EchoJudge:
    """The echo model's output is the words of the last message (or the prompt),
    up to ``max_tokens``, joined by single spaces: anything else is wrong work."""

    def check(self, job: JobSubmitted, text: str, finish_reason: str) -> Verdict:
        source = (job.messages[-1].content if job.kind == "chat" and job.messages
                  else job.prompt or "")
        expected = " ".join(source.split()[:job.sampling.max_tokens])
        grammar = job.sampling.grammar
        if grammar is not None and not follows(grammar, expected):  # see workers.echo
            expected = smallest_instance(grammar, instance_limit(job.sampling.max_tokens))[0]
        if text == expected:
            return Verdict(True, "the echo model's output, re-run")
        evidence = json.dumps({"expected": expected[:400], "claimed": text[:400]})
        return Verdict(False, "not the echo model's output (re-run differs)", evidence)


CALIBRATION = (("What is the capital of France?", 0.0, None), ("Say hello.", 0.7, 1),
               ("Name a colour.", 1.0, 2), ("Count to five.", 1.0, 3))


def confirms_itself(judge, max_tokens: int = 16) -> bool:
    """Whether ``judge`` (a PrefillJudge) passes its own model's honest outputs."""
    from verifier.prefill import job_request
    for prompt, temperature, seed in CALIBRATION:
        sampling = Sampling(max_tokens=max_tokens, temperature=temperature, seed=seed)
        job = JobSubmitted(job_id="calibration", account="-", key_id="-", model="-",
                           kind="chat", messages=(ChatMessage(role="user", content=prompt),),
                           sampling=sampling, zone="global", route="global",
                           deadline=datetime.now(timezone.utc) + timedelta(minutes=1))
        steps = list(judge.engine.generate(job_request(job)))
        verdict = judge.check(job, "".join(s.text for s in steps), steps[-1].finish_reason)
        if not verdict.passed:
            log.error("the prefill judge fails an honest output of its own model (%s: %s)",
                      verdict.reason, verdict.evidence[:300])
            return False
    return True


class Judges:
    """One judge per root a result names: the very weights the node signed it ran,
    fetched from the model store (and verified) on first use, off the loop. A
    result of an unpublished local model is judged by ``models_dir/<name>``."""

    def __init__(self, models_dir: Path, store: ModelStore | None = None) -> None:
        self.models_dir, self.store = Path(models_dir), store
        self._loaded: dict[str, Judge | None] = {}  # by root, or by name
        self.unjudgeable: set[str] = set()  # roots (names) whose judge fails honest output

    def add(self, model: str, judge: Judge) -> None:
        self._loaded[model] = judge

    async def get(self, model: str, root: str | None = None) -> Judge | None:
        if (root or model) not in self._loaded:
            path = await self._fetched(root) if root and self.store else None
            if path is not None:
                self._loaded[root] = await asyncio.to_thread(self._load, model, path, root)
            else:  # no root, or one the store does not publish: judged by name
                if model not in self._loaded:
                    self._loaded[model] = await asyncio.to_thread(self._load, model)
                if root:
                    self._loaded[root] = self._loaded[model]
        return self._loaded[root or model]

    async def _fetched(self, root: str) -> Path | None:
        try:
            manifest = await self.store.manifest(root)
        except NotPublished:
            return None
        return await LocalModels(self.models_dir).materialize(
            manifest, service_fetch(self.store))

    def _load(self, model: str, path: Path | None = None, key: str | None = None) -> Judge | None:
        path = path or self.models_dir / model
        if not (path / "config.json").is_file():
            log.error("no copy of model %s in %s: its checks wait for a verifier that has it",
                      model, self.models_dir)
            return None
        if is_echo_model(path):
            return EchoJudge()
        if is_embedding_model(path):  # re-embeds and compares by cosine similarity
            from verifier.embedding_judge import EmbeddingJudge  # torch: only for real models
            try:
                return EmbeddingJudge.load(path)
            except Exception as exc:  # noqa: BLE001 - a broken copy judges nothing
                log.error("model %s not loadable for checks: %s", model, exc)
                return None
        try:
            from verifier.prefill import PrefillJudge  # torch: only for real models
            judge = PrefillJudge.load(path)
        except Exception as exc:  # noqa: BLE001 - a broken copy judges nothing
            log.error("model %s not loadable for checks: %s", model, exc)
            return None
        if not confirms_itself(judge):
            log.error("model %s is not judged: its checks are set aside unjudged", model)
            self.unjudgeable.add(key or model)
            return None
        return judge
