"""Usage as the network counts it: the job's prompt and the node's text,
tokenized with the model's own tokenizer, never the node's word.

The count follows the engine's (``workers/engine.py``): a chat prompt through
the model's chat template without added special tokens, a completion prompt
with them; the output as plain text. The echo model (``workers/echo.py``)
counts whitespace-separated words. A model whose tokenizer the gate cannot
load cannot be counted, and its results are not paid (``gate.results``).
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Protocol

from bus.events import JobSubmitted

log = logging.getLogger("inferbus.gate")
ECHO_MODEL_TYPE = "inferbus-echo"  # workers/echo.py's marker in config.json


class Counter(Protocol):
    def prompt(self, job: JobSubmitted) -> int: ...

    def output(self, text: str) -> int: ...


class WordCounter:
    """The echo model's tokens: words."""

    def prompt(self, job: JobSubmitted) -> int:
        if job.kind == "chat":
            return sum(len(m.content.split()) for m in job.messages or ())
        return len((job.prompt or "").split())

    def output(self, text: str) -> int:
        return len(text.split())


class TokenizerCounter:
    """A Hugging Face model's tokens (its fast tokenizer; no torch)."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoTokenizer  # loads no torch for a tokenizer
        self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._backend = getattr(self._tok, "backend_tokenizer", None)

    def _count(self, text: str, special: bool) -> int:
        if self._backend is not None:
            return len(self._backend.encode(text, add_special_tokens=special).ids)
        return len(self._tok(text, add_special_tokens=special)["input_ids"])

    def prompt(self, job: JobSubmitted) -> int:
        if job.kind == "chat":
            messages = [m.model_dump() for m in job.messages or ()]
            text = self._tok.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=False)
            return max(self._count(text, special=False), 1)
        return max(self._count(job.prompt or "", special=True), 1)

    def output(self, text: str) -> int:
        return self._count(text, special=False) if text else 0


class Counters:
    """One counter per model served, loaded from ``models_dir`` on first use."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self._loaded: dict[str, Counter | None] = {}

    def get(self, model: str) -> Counter | None:
        """The model's counter; None when the gate has no copy of its tokenizer."""
        if model not in self._loaded:
            self._loaded[model] = self._load(model)
        return self._loaded[model]

    async def ready(self, model: str) -> Counter | None:
        """:meth:`get`, loading a tokenizer in a thread: a first load (transformers'
        import included) takes seconds, which the gate's event loop must not."""
        if model not in self._loaded:
            counter = await asyncio.to_thread(self._load, model)
            self._loaded.setdefault(model, counter)
        return self._loaded[model]

    async def warm(self) -> None:
        """Load every model of the models dir now, so no first result waits for it."""
        names = sorted(p.name for p in self.models_dir.iterdir()
                       if (p / "config.json").is_file()) if self.models_dir.is_dir() else []
        for name in names:
            await self.ready(name)

    def add(self, model: str, counter: Counter) -> None:
        self._loaded[model] = counter

    def _load(self, model: str) -> Counter | None:
        path = self.models_dir / model
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            log.error("no copy of model %s in %s: its results cannot be recounted", model,
                      self.models_dir)
            return None
        if config.get("model_type") == ECHO_MODEL_TYPE:
            return WordCounter()
        try:
            return TokenizerCounter(path)
        except Exception as exc:  # noqa: BLE001 - a broken copy: counted as none
            log.error("tokenizer of %s not loadable: %s", model, exc)
            return None
