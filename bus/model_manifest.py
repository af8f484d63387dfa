"""A model as content: its manifest, its chunks, and the root hash that names it.

A model directory (config, tokenizer, weights) is described by a
:class:`Manifest`: every file, its size, and the SHA-256 of each of its chunks
in order. The manifest's :meth:`~Manifest.root` is a two-level hash tree over
it (chunk hashes -> a hash per file -> one root), so the root names exactly
these bytes: a node that holds the chunks of a manifest whose root it asked
for holds the model, whoever served the pieces.

Chunk boundaries (:func:`chunk_spans`) follow the safetensors layout: the
header is one run, and every tensor starts a new run, cut into pieces of at
most ``CHUNK_SIZE``. A tensor whose values change changes only its own
chunks; one that changes shape changes the header and its own chunks, and
every other tensor's chunks stay byte-identical though their offsets moved
(docs/models.md: why this beats rolling-hash boundaries for weights). Other
files are cut at fixed ``CHUNK_SIZE`` boundaries.

No NATS and no torch here: the store (``bus.model_store``), the fetch
(``bus.model_fetch``) and the command line share this module.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import Field, field_validator

from bus.contracts import Contract

CHUNK_SIZE = 4 << 20  # 4 MiB: one tensor of a small model, or part of a big one
MAX_FILES = 4096
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
FORMAT = "inferbus-model-v1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


class Chunk(Contract):
    sha256: Sha256
    size: int = Field(ge=1, le=CHUNK_SIZE)


class FileEntry(Contract):
    """One file of the model, ``path`` relative to the model directory."""

    path: str = Field(min_length=1, max_length=255)
    size: int = Field(ge=0, le=1 << 44)
    chunks: tuple[Chunk, ...] = Field(max_length=1 << 22)

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        parts = PurePosixPath(path).parts
        if (path.startswith("/") or "\\" in path or not parts
                or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
            raise ValueError(f"not a plain relative path: {path!r}")
        return path

    def offsets(self) -> Iterator[tuple[int, Chunk]]:
        """(offset in the file, chunk) of each chunk, in order."""
        at = 0
        for chunk in self.chunks:
            yield at, chunk
            at += chunk.size

    def digest(self) -> str:
        """This file's node in the hash tree."""
        body = "\n".join([f"file {self.path} {self.size}", *(c.sha256 for c in self.chunks)])
        return hashlib.sha256(body.encode()).hexdigest()

    @property
    def is_weights(self) -> bool:
        return self.path.endswith(WEIGHT_SUFFIXES)


class Manifest(Contract):
    """What a model is: its files and their chunks, plus what its config says."""

    format: Literal["inferbus-model-v1"] = FORMAT
    model_type: str | None = Field(default=None, max_length=64)
    context_length: int = Field(default=0, ge=0, le=1 << 24)
    files: tuple[FileEntry, ...] = Field(min_length=1, max_length=MAX_FILES)

    @field_validator("files")
    @classmethod
    def _sorted_unique(cls, files: tuple[FileEntry, ...]) -> tuple[FileEntry, ...]:
        paths = [f.path for f in files]
        if paths != sorted(set(paths)):
            raise ValueError("files must be sorted by path, each once")
        for f in files:
            if sum(c.size for c in f.chunks) != f.size:
                raise ValueError(f"chunks of {f.path} do not add up to its size")
        return files

    def root(self) -> str:
        """The model's identity: the top of the hash tree over this manifest."""
        lines = [self.format, f"config {self.model_type or '-'} {self.context_length}",
                 *(f"{f.path} {f.digest()}" for f in self.files)]
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def chunk_set(self) -> dict[str, int]:
        """Each distinct chunk (sha256 -> size): what a store holds for this model."""
        return {c.sha256: c.size for f in self.files for c in f.chunks}

    def without_weights(self) -> "Manifest":
        """The files a tokenizer needs (no weights): what the gate fetches to recount."""
        return self.model_copy(update={"files": tuple(f for f in self.files if not f.is_weights)})


def safetensors_starts(path: Path) -> list[int]:
    """Where the header's end and each tensor begin in a safetensors file (bytes);
    [] when ``path`` is not one."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return []
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            return []
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return []
    data = 8 + n
    starts = {data}
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        begin = entry.get("data_offsets", [None])[0]
        if isinstance(begin, int) and 0 <= begin and data + begin < size:
            starts.add(data + begin)
    return sorted(starts)


def chunk_spans(path: Path, chunk_size: int = CHUNK_SIZE) -> list[tuple[int, int]]:
    """(offset, length) of each chunk of the file at ``path``, in order."""
    size = path.stat().st_size
    starts = [0, *safetensors_starts(path)] if path.suffix == ".safetensors" else [0]
    spans = []
    for begin, end in zip(starts, [*starts[1:], size]):
        spans += [(at, min(chunk_size, end - at)) for at in range(begin, end, chunk_size)]
    return spans


def model_files(directory: Path) -> list[str]:
    """The files of a model directory, relative and sorted; hidden ones left out
    (``.manifest.json`` our own, ``.cache`` and the like)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(directory)
        found += [(rel / f).as_posix() for f in filenames if not f.startswith(".")]
    return sorted(found)


def read_config(directory: Path) -> tuple[str | None, int]:
    """(model_type, context length) from a model directory's ``config.json``."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None, 0
    config = config.get("text_config", config)  # multimodal configs nest the LM's
    length = next((config[k] for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                   if isinstance(config.get(k), int)), 0)
    kind = config.get("model_type")
    return (kind[:64] if isinstance(kind, str) else None), max(0, min(length, 1 << 24))


def read_span(path: Path, offset: int, length: int) -> bytes:
    """``length`` bytes of the file at ``path`` from ``offset``: one chunk's bytes."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def iter_chunks(directory: Path, chunk_size: int = CHUNK_SIZE,
                ) -> Iterator[tuple[str, int, bytes]]:
    """(relative path, offset, bytes) of every chunk of a model directory."""
    for rel in model_files(directory):
        path = directory / rel
        with open(path, "rb") as fh:
            for offset, length in chunk_spans(path, chunk_size):
                fh.seek(offset)
                yield rel, offset, fh.read(length)


def build_manifest(directory: Path, chunk_size: int = CHUNK_SIZE) -> Manifest:
    """Hash every chunk of the model directory ``directory`` into its manifest."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a model directory (no config.json)")
    files: dict[str, list[Chunk]] = {rel: [] for rel in model_files(directory)}
    for rel, _, data in iter_chunks(directory, chunk_size):
        files[rel].append(Chunk(sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    model_type, context = read_config(directory)
    return Manifest(model_type=model_type, context_length=context, files=tuple(
        FileEntry(path=rel, size=(directory / rel).stat().st_size, chunks=tuple(chunks))
        for rel, chunks in files.items()))
