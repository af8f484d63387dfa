"""Models by content address on a real nats-server: push, fetch, verify, resume,
dedup and collection (``bus.model_store``, ``bus.model_fetch``, ``bus.model_cache``)."""
from __future__ import annotations

import hashlib
import shutil

import nats
import pytest
from safetensors.torch import load_file, save_file

from bus.config import Settings
from bus.model_cache import ChunkRefused, LocalModels
from bus.model_fetch import pull, plan, service_fetch
from bus.model_manifest import build_manifest, iter_chunks
from bus.model_store import ModelStore
from cli import model_admin as network
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.asyncio


@pytest.fixture
def settings(fresh_nats, tmp_path) -> Settings:
    return Settings(nats_url=fresh_nats.url, data_dir=tmp_path / "data")


@pytest.fixture
async def store(fresh_nats, settings):
    nc = await nats.connect(fresh_nats.url)
    yield ModelStore(nc.jetstream(), settings.layout())
    await nc.close()


def _changed_copy(src, dest, tensor_index: int = 0):
    """``src`` with one tensor's values changed (same shape): a new version."""
    shutil.copytree(src, dest)
    weights = dest / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[tensor_index]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    return name


async def _fetch(store: ModelStore, models_dir, root: str):
    manifest = await store.manifest(root)
    return await LocalModels(models_dir).materialize(
        manifest, service_fetch(store))


async def test_a_pushed_model_is_fetched_byte_for_byte_under_its_root(settings, store, models_dir,
                                                                      tmp_path):
    pushed = await network.push(settings, models_dir / TINY_MODEL, "tiny", None)
    assert pushed.root == build_manifest(models_dir / TINY_MODEL).root()
    assert pushed.stored_chunks == pushed.chunks  # a first push stores every chunk
    entry, _ = await store.entry("tiny")
    assert entry.current().root == pushed.root
    assert entry.current().regions == (settings.this_region(),)
    path = await _fetch(store, tmp_path / "node", pushed.root)
    assert path == tmp_path / "node" / "roots" / pushed.root
    for f in (models_dir / TINY_MODEL).iterdir():
        assert (path / f.name).read_bytes() == f.read_bytes(), f.name
    assert build_manifest(path).root() == pushed.root
    again = await network.push(settings, models_dir / TINY_MODEL, "tiny", None)
    assert again.stored_chunks == 0  # a rerun stores nothing new: pushes resume


async def test_a_version_changing_one_tensor_stores_only_that_tensors_chunks(
        settings, store, models_dir, tmp_path):
    first = await network.push(settings, models_dir / TINY_MODEL, "tiny", None)
    changed = _changed_copy(models_dir / TINY_MODEL, tmp_path / "v2")
    second = await network.push(settings, tmp_path / "v2", "tiny", None)
    assert second.root != first.root
    manifest = build_manifest(tmp_path / "v2")
    weights = next(f for f in manifest.files if f.path == "model.safetensors")
    # safetensors' header is unchanged (same shapes), so only the tensor's chunks are new
    assert second.stored_chunks == 1, (changed, second)
    assert second.stored_bytes < weights.size / 4
    entry, _ = await store.entry("tiny")
    assert [v.state for v in entry.versions] == ["draining", "serving"]
    assert entry.accepted() == {first.root, second.root}


async def test_a_flipped_byte_in_a_stored_chunk_is_refused_and_named(settings, store, models_dir,
                                                                     tmp_path, caplog):
    pushed = await network.push(settings, models_dir / TINY_MODEL, "tiny", None)
    manifest = await store.manifest(pushed.root)
    victim = max((c for f in manifest.files for c in f.chunks), key=lambda c: c.size)
    good = await _chunk_bytes(store, victim.sha256)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    await store.put_chunk(store.layout.home, victim.sha256, bytes(bad))
    with pytest.raises(ChunkRefused, match=victim.sha256):
        await _fetch(store, tmp_path / "node", pushed.root)
    assert f"refused chunk {victim.sha256}" in caplog.text
    assert not LocalModels(tmp_path / "node").complete(pushed.root)
    await store.put_chunk(store.layout.home, victim.sha256, good)  # the store repaired
    path = await _fetch(store, tmp_path / "node", pushed.root)  # resumes, fetches the rest
    assert build_manifest(path).root() == pushed.root


async def test_an_interrupted_fetch_resumes_without_fetching_again(settings, store, models_dir,
                                                                   tmp_path):
    pushed = await network.push(settings, models_dir / TINY_MODEL, "tiny", None)
    manifest = await store.manifest(pushed.root)
    inner = service_fetch(store)
    fetched: list[str] = []

    async def dies_halfway(missing, deliver, attempt):
        async def counted(sha, data):
            if len(fetched) == len(manifest.chunk_set()) // 2:
                raise Killed  # the process is killed mid-fetch
            fetched.append(sha)
            await deliver(sha, data)
        await inner(missing, counted, attempt)
    local = LocalModels(tmp_path / "node")
    with pytest.raises(Killed):
        await local.materialize(manifest, dies_halfway)
    first_half = list(fetched)
    fetched.clear()

    async def counting(missing, deliver, attempt):
        fetched.extend(missing)
        await inner(missing, deliver, attempt)
    path = await local.materialize(manifest, counting)
    assert set(fetched).isdisjoint(first_half)
    assert len(fetched) == len(manifest.chunk_set()) - len(first_half)
    assert build_manifest(path).root() == pushed.root


async def test_chunks_held_from_another_version_are_reused(settings, store, models_dir, tmp_path):
    first = await network.push(settings, models_dir / TINY_MODEL, "tiny", None)
    _changed_copy(models_dir / TINY_MODEL, tmp_path / "v2")
    second = await network.push(settings, tmp_path / "v2", "tiny", None)
    await _fetch(store, tmp_path / "node", first.root)
    fetched = []
    inner = service_fetch(store)

    async def counting(missing, deliver, attempt):
        fetched.extend(missing)
        await inner(missing, deliver, attempt)
    await LocalModels(tmp_path / "node").materialize(await store.manifest(second.root), counting)
    assert len(fetched) == 1  # only the changed tensor's chunk came over the network


async def test_removing_a_model_collects_the_chunks_only_it_used(settings, store, models_dir,
                                                                  tmp_path):
    first = await network.push(settings, models_dir / TINY_MODEL, "tiny", None)
    _changed_copy(models_dir / TINY_MODEL, tmp_path / "v2")
    await network.push(settings, tmp_path / "v2", "tiny-b", None)
    out = await network.remove(settings, "tiny", None, grace_s=0)
    assert first.root[:16] in out
    entry, _ = await store.entry("tiny")
    assert entry.accepted() == frozenset()
    still = (await store.entry("tiny-b"))[0].current().root
    path = await _fetch(store, tmp_path / "node", still)  # tiny-b lost none of its chunks
    assert build_manifest(path).root() == still
    only_tiny = set(build_manifest(models_dir / TINY_MODEL).chunk_set()) - set(
        build_manifest(tmp_path / "v2").chunk_set())
    assert only_tiny and not await store.held(store.layout.home, only_tiny)


async def test_a_collection_spares_chunks_a_push_in_progress_just_stored(settings, store,
                                                                         models_dir):
    manifest = build_manifest(models_dir / TINY_MODEL)
    sha, size = next(iter(manifest.chunk_set().items()))
    data = next(d for _, _, d in iter_chunks(models_dir / TINY_MODEL) if len(d) == size
                and hashlib.sha256(d).hexdigest() == sha)
    await store.put_chunk(store.layout.home, sha, data)  # no version names it yet
    assert await store.collect() == {store.layout.home: 0}
    assert await store.held(store.layout.home, [sha])
    assert await store.collect(grace_s=0) == {store.layout.home: 1}


class Killed(Exception):
    """The fetching process dies here (what it wrote and journaled stays on disk)."""


async def _chunk_bytes(store: ModelStore, sha: str) -> bytes:
    got = {}

    async def keep(s, data):
        got[s] = data
    fetch_plan = await plan(store, store.layout.home, [sha])
    await pull(store.js, fetch_plan, keep)
    assert hashlib.sha256(got[sha]).hexdigest() == sha
    return got[sha]

