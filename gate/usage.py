"""Usage as the network counts it: the job's prompt and the node's text,
tokenized with the model's own tokenizer, never the node's word.

The count follows the engine's (``workers/engine.py``): a chat prompt through
the model's chat template without added special tokens, a completion prompt
with them; the output as plain text. An embedding job's inputs count as the
embedder sees them (``workers/embedder.py``): each text with its special
tokens, summed; it has no output tokens. A counter also knows its model's
vector size (``dims``, None for a model that does not embed), so the gate can
refuse vectors of the wrong shape. The echo model (``workers/echo.py``)
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
from bus.vectors import Vectors

log = logging.getLogger("inferbus.gate")
ECHO_MODEL_TYPE = "inferbus-echo"  # workers/echo.py's marker in config.json


class Counter(Protocol):
    dims: int | None

    def prompt(self, job: JobSubmitted) -> int: ...

    def output(self, text: str) -> int: ...


class WordCounter:
    """The echo model's tokens: words."""

    dims = None

    def prompt(self, job: JobSubmitted) -> int:
        if job.kind == "embedding":
            return sum(len(text.split()) for text in job.inputs or ())
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
        if self._backend is not None:
            # A tokenizer.json may pad or cut every encoding (all-MiniLM's pads to 128):
            # a count is of the text's own tokens, as the engines encode them.
            self._backend.no_padding()
            self._backend.no_truncation()
        self.dims = embedding_dims(path)

    def _count(self, text: str, special: bool) -> int:
        if self._backend is not None:
            return len(self._backend.encode(text, add_special_tokens=special).ids)
        return len(self._tok(text, add_special_tokens=special)["input_ids"])

    def prompt(self, job: JobSubmitted) -> int:
        if job.kind == "embedding":
            return sum(self._count(text, special=True) for text in job.inputs or ())
        if job.kind == "chat":
            messages = [m.model_dump() for m in job.messages or ()]
            text = self._tok.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=False)
            return max(self._count(text, special=False), 1)
        return max(self._count(job.prompt or "", special=True), 1)

    def output(self, text: str) -> int:
        return self._count(text, special=False) if text else 0


def embedding_dims(path: Path) -> int | None:
    """The vector size of the sentence-transformers model in ``path`` (its pooling
    module's ``word_embedding_dimension``); None when it is not one."""
    try:
        modules = json.loads((Path(path) / "modules.json").read_text())
        pooling = next(m for m in modules if str(m.get("type", "")).endswith(".Pooling"))
        config = json.loads((Path(path) / pooling["path"] / "config.json").read_text())
        return int(config["word_embedding_dimension"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


class Counters:
    """One counter per model served: by the root a result names, from the tokenizer
    files of that root (fetched from the model store, weights left out); by name,
    from ``models_dir/<name>``, for a local model nobody published."""

    def __init__(self, models_dir: Path, store: ModelStore | None = None) -> None:
        self.models_dir, self.store = Path(models_dir), store
        self._loaded: dict[str, Counter | None] = {}  # by root, or by name
        self._by_model: dict[str, Counter] = {}  # the last root loaded of each name
        self._loading: dict[str, asyncio.Future] = {}  # loads under way, by root or name

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
            # One load per key, however many results arrive before it is done:
            # transformers' lazy imports fail when two threads make them at once.
            if (loading := self._loading.get(key)) is None:
                loading = self._loading[key] = asyncio.ensure_future(self._load_off_loop(
                    model, root))
                loading.add_done_callback(lambda _: self._loading.pop(key, None))
            counter = await asyncio.shield(loading)
            self._loaded.setdefault(key, counter)
            if counter is not None:
                self._by_model[model] = counter
        return self.get(model, root)

    async def _load_off_loop(self, model: str, root: str | None) -> Counter | None:
        path = await self._fetched(root) if root and self.store else None
        return await asyncio.to_thread(self._load, model, path)

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


def vectors_refusal(job: JobSubmitted, vectors: Vectors | None, counter: Counter | None,
                    text: str = "") -> str | None:
    """Why a result's vectors cannot be an honest answer to ``job``, or None: one
    vector per input, of the model's size, each finite and of unit length (the
    embedder normalises), and no text beside them (the signature covers only the
    vectors, and text would be billed as output); no vectors on a job that asked
    for text."""
    if job.kind != "embedding":
        return None if vectors is None else "vectors returned for a job that asked for text"
    if vectors is None:
        return "no vectors returned for an embedding job"
    if text:
        return "text returned beside the vectors of an embedding job"
    if vectors.count != len(job.inputs or ()):
        return f"{vectors.count} vectors returned for {len(job.inputs or ())} inputs"
    if counter is not None and counter.dims is not None and vectors.dims != counter.dims:
        return f"vectors of {vectors.dims} dimensions; {job.model} makes {counter.dims}"
    if (bad := vectors.unnormalised()) is not None:
        return f"vector {bad} is not a finite unit vector"
    return None
