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
from bus.model_cache import LocalModels
from bus.model_fetch import service_fetch
from bus.model_store import ModelStore, NotPublished

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
    """One counter per model served: by the root a result names, from the tokenizer
    files of that root (fetched from the model store, weights left out); by name,
    from ``models_dir/<name>``, for a local model nobody published."""

    def __init__(self, models_dir: Path, store: ModelStore | None = None) -> None:
        self.models_dir, self.store = Path(models_dir), store
        self._loaded: dict[str, Counter | None] = {}  # by root, or by name
        self._by_model: dict[str, Counter] = {}  # the last root loaded of each name

    def get(self, model: str, root: str | None = None) -> Counter | None:
        """The counter of ``root`` once :meth:`ready` loaded it, else of ``model`` by
        name; None when the gate has no copy of its tokenizer."""
        if root is not None and self._loaded.get(root) is not None:
            return self._loaded[root]
        if model not in self._loaded:
            self._loaded[model] = self._load(model)
        return self._loaded[model] or self._by_model.get(model)

    async def ready(self, model: str, root: str | None = None) -> Counter | None:
        """:meth:`get`, loading (and fetching) a tokenizer off the event loop: a first
        load (transformers' import included) takes seconds, which the gate's must not."""
        key = root or model
        if key not in self._loaded:
            path = await self._fetched(root) if root and self.store else None
            counter = await asyncio.to_thread(self._load, model, path)
            self._loaded.setdefault(key, counter)
            if counter is not None:
                self._by_model[model] = counter
        return self.get(model, root)

    async def _fetched(self, root: str) -> Path | None:
        """A local copy of ``root``'s files but its weights; None when unpublished."""
        try:
            manifest = (await self.store.manifest(root)).without_weights()
        except NotPublished:
            return None
        return await LocalModels(self.models_dir).materialize(manifest, service_fetch(self.store))

    async def warm(self) -> None:
        """Load every model of the models dir now, so no first result waits for it."""
        names = sorted(p.name for p in self.models_dir.iterdir()
                       if (p / "config.json").is_file()) if self.models_dir.is_dir() else []
        for name in names:
            await self.ready(name)

    def add(self, model: str, counter: Counter) -> None:
        self._loaded[model] = counter

    def _load(self, model: str, path: Path | None = None) -> Counter | None:
        path = path or self.models_dir / model
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
