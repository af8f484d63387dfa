"""Which judge checks which model's results.

The echo model (``workers/echo.py``) is deterministic: its judge re-runs it and
compares. A Hugging Face model is judged by one prefill of prompt + claimed
output (:mod:`verifier.prefill`, torch loaded only then). A model the verifier
has no copy of cannot be judged here: its checks wait for a verifier that has it.
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from bus.events import JobSubmitted
from verifier.verdict import Judge, Verdict
from workers.echo import is_echo_model

log = logging.getLogger("inferbus.verifier")


class EchoJudge:
    """The echo model's output is the words of the last message (or the prompt),
    up to ``max_tokens``, joined by single spaces: anything else is wrong work."""

    def check(self, job: JobSubmitted, text: str, finish_reason: str) -> Verdict:
        source = (job.messages[-1].content if job.kind == "chat" and job.messages
                  else job.prompt or "")
        expected = " ".join(source.split()[:job.sampling.max_tokens])
        if text == expected:
            return Verdict(True, "the echo model's output, re-run")
        evidence = json.dumps({"expected": expected[:400], "claimed": text[:400]})
        return Verdict(False, "not the echo model's output (re-run differs)", evidence)


class Judges:
    """One judge per model, loaded from ``models_dir`` on first use (off the loop)."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self._loaded: dict[str, Judge | None] = {}

    def add(self, model: str, judge: Judge) -> None:
        self._loaded[model] = judge

    async def get(self, model: str) -> Judge | None:
        if model not in self._loaded:
            self._loaded[model] = await asyncio.to_thread(self._load, model)
        return self._loaded[model]

    def _load(self, model: str) -> Judge | None:
        path = self.models_dir / model
        if not (path / "config.json").is_file():
            log.error("no copy of model %s in %s: its checks wait for a verifier that has it",
                      model, self.models_dir)
            return None
        if is_echo_model(path):
            return EchoJudge()
        try:
            from verifier.prefill import PrefillJudge  # torch: only for real models
            return PrefillJudge.load(path)
        except Exception as exc:  # noqa: BLE001 - a broken copy judges nothing
            log.error("model %s not loadable for checks: %s", model, exc)
            return None
