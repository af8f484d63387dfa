"""What a spot check concludes, and the port every model's judge implements."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bus.events import JobSubmitted


@dataclass(frozen=True)
class Verdict:
    """Whether a claimed output is what the model could have produced for the job.

    ``reason`` is one line for people; ``evidence`` a short JSON text the audit
    can judge the verdict by (what was compared, the worst positions).
    """

    passed: bool
    reason: str
    evidence: str = ""


class Judge(Protocol):
    """Checks one model's claimed outputs. ``check`` may take CPU seconds: the
    verifier calls it in a thread."""

    def check(self, job: JobSubmitted, text: str, finish_reason: str) -> Verdict:
        """Judge ``text`` as the output of ``job`` (its prompt and sampling),
        ended for ``finish_reason`` ("stop" or "length")."""
        ...
