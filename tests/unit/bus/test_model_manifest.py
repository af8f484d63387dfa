"""A model's manifest, its chunk boundaries and its root; which roots a name means."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from bus.model_book import CatalogBook
from bus.model_manifest import Chunk, FileEntry, Manifest, build_manifest, chunk_spans
from bus.model_store import CatalogEntry, ModelVersion


def a_model(path, tensors: dict[str, torch.Tensor]):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama",
                                                  "max_position_embeddings": 2048}))
    save_file(tensors, path / "model.safetensors")
    return path


def test_every_tensor_starts_a_chunk_and_big_ones_are_cut(tmp_path):
    model = a_model(tmp_path / "m", {"a": torch.zeros(10), "b": torch.ones(1000)})
    spans = chunk_spans(model / "model.safetensors", chunk_size=1024)
    size = (model / "model.safetensors").stat().st_size
    assert spans[0][0] == 0 and sum(n for _, n in spans) == size  # the whole file, in order
    assert all(n <= 1024 for _, n in spans)
    header_end = spans[1][0]
    assert [at - header_end for at, _ in spans[1:3]] == [0, 40]  # a's 10 floats, then b


def test_a_reshaped_tensor_leaves_the_other_tensors_chunks_alone(tmp_path):
    rest = torch.arange(5000, dtype=torch.float32)
    one = build_manifest(a_model(tmp_path / "one", {"a": torch.zeros(10), "z": rest}))
    two = build_manifest(a_model(tmp_path / "two", {"a": torch.zeros(30), "z": rest}))
    chunks = lambda m: {c.sha256 for f in m.files for c in f.chunks}  # noqa: E731
    assert one.root() != two.root()
    # z moved by 80 bytes; its chunks are the same bytes, so only header and a differ
    assert len(chunks(two) - chunks(one)) == 2


def test_the_root_names_the_bytes_and_the_config(tmp_path):
    model = a_model(tmp_path / "m", {"a": torch.zeros(4)})
    first = build_manifest(model)
    assert build_manifest(model).root() == first.root()
    assert (first.model_type, first.context_length) == ("llama", 2048)
    (model / "extra.txt").write_text("x")
    assert build_manifest(model).root() != first.root()
    assert Manifest.model_validate_json(first.model_dump_json()).root() == first.root()


def test_weights_are_left_out_for_a_tokenizer_copy(tmp_path):
    manifest = build_manifest(a_model(tmp_path / "m", {"a": torch.zeros(4)}))
    assert [f.path for f in manifest.without_weights().files] == ["config.json"]


@pytest.mark.parametrize("path", ["../evil", "/etc/passwd", "a/../../b", ".hidden", "a\\b", ""])
def test_a_manifest_path_outside_the_model_is_refused(path):
    with pytest.raises(ValidationError):
        FileEntry(path=path, size=0, chunks=())


def test_a_manifest_whose_chunks_do_not_add_up_is_refused():
    chunk = Chunk(sha256="a" * 64, size=3)
    with pytest.raises(ValidationError, match="add up"):
        Manifest(files=(FileEntry(path="config.json", size=4, chunks=(chunk,)),))


def _version(root: str, state: str) -> ModelVersion:
    return ModelVersion(root=root, size=1, state=state, regions=("eu",),
                        published_at=datetime.now(timezone.utc))


def test_a_name_is_served_only_by_its_serving_and_draining_roots():
    book = CatalogBook()
    entry = CatalogEntry(name="m", versions=(_version("a" * 64, "retired"),
                                             _version("b" * 64, "draining"),
                                             _version("c" * 64, "serving")))
    book.apply("m", entry.model_dump_json().encode())
    assert book.refusal("m", "b" * 64) is None and book.refusal("m", "c" * 64) is None
    assert "not a published one" in book.refusal("m", "a" * 64)
    assert "not a published one" in book.refusal("m", None)
    assert entry.current().root == "c" * 64


def test_an_unpublished_name_is_served_only_on_an_open_network():
    assert CatalogBook().refusal("local", "d" * 64) is None
    assert "not published" in CatalogBook(published_only=True).refusal("local", "d" * 64)
