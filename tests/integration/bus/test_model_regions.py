"""Models across a real supercluster (eu, na, ap): a push lands in the
uploader's region only; a node in another region is served from there while
its own region gets a copy, and is served from its own region after that;
``models replicate`` copies to any region asked. Where the bytes are is read
off each server's disk."""
from __future__ import annotations

import asyncio

import nats
import pytest

from bus.config import Settings
from bus.grants import NodeGrant
from bus.model_cache import LocalModels
from bus.model_fetch import ModelAsk, pull
from bus.model_manifest import build_manifest
from bus.model_store import ModelStore
from cli import model_admin
from gate.model_access import ModelAccess
from tests.conftest import TINY_MODEL
from tests.supercluster import Supercluster

pytestmark = pytest.mark.asyncio
NAME = "tiny"


def marker_of(models_dir) -> bytes:
    """Bytes found only in this model's weights (random values)."""
    data = (models_dir / TINY_MODEL / "model.safetensors").read_bytes()
    return data[len(data) // 2:len(data) // 2 + 48]


def where(sc: Supercluster, marker: bytes) -> set[str]:
    return {server.split("-")[0] for server, hits in sc.find(marker).items() if hits}


async def test_a_model_is_served_near_its_node_after_its_first_fetch(sc, models_dir, tmp_path):
    settings = Settings(nats_url=sc.url("eu"), regions="eu,na,ap", region="eu",
                        data_dir=tmp_path / "admin")
    pushed = await model_admin.push(settings, models_dir / TINY_MODEL, NAME, None)
    assert pushed.regions == ("eu",)
    marker = marker_of(models_dir)
    assert where(sc, marker) == {"eu"}

    nc = await nats.connect(sc.url("na"))
    try:
        js = nc.jetstream()
        store = ModelStore(js, settings.layout())
        access = ModelAccess(store)
        node = NodeGrant(node_id="ab" * 32, node_name="na-1", operator="op", zone="na",
                         models=(NAME,))
        first = await access.answer(node, ModelAsk(op="manifest", name=NAME))
        chunks = tuple(first.manifest.chunk_set())
        fallback = await access.answer(node, ModelAsk(op="fetch", name=NAME, root=first.root,
                                                      chunks=chunks))
        assert fallback.plan.region == "eu"  # na holds no copy yet
        await asyncio.gather(*access._copying.values())  # the copy into na it started
        entry, _ = await store.entry(NAME)
        assert entry.current().regions == ("eu", "na")
        near = await access.answer(node, ModelAsk(op="fetch", name=NAME, root=first.root,
                                                  chunks=chunks))
        assert near.plan.region == "na"

        eu_node = NodeGrant(node_id="cd" * 32, node_name="eu-1", operator="op", zone="eu",
                            models=(NAME,))
        burned = await access.answer(eu_node, ModelAsk(op="fetch", name=NAME, root=first.root,
                                                       chunks=chunks, avoid=("eu",)))
        assert burned.plan.region == "na"  # its own region sent it bad bytes: the other first

        async def fetch(missing, deliver, attempt):
            await pull(js, near.plan, deliver)
        path = await LocalModels(tmp_path / "node").materialize(first.manifest, fetch)
        assert build_manifest(path).root() == pushed.root
        assert where(sc, marker) == {"eu", "na"}
    finally:
        await nc.close()

    out = await model_admin.replicate_to(settings, NAME, "ap", None)
    assert "eu, na, ap" in out
    assert where(sc, marker) == {"eu", "na", "ap"}
