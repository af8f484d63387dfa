"""The regions' stream layout on a real supercluster (na, the home region, and
eu): every stream is created in its own region whichever region the creating
client is in, a stream moved or copied out of its region stops the services
from starting, and content past its retention reads as gone."""
from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import Placement, StreamConfig, StreamSource
from nats.js.errors import NotFoundError

from bus import regions, subjects
from bus.content import ContentStore, put_output
from bus.events import JobCompleted, Usage, output_hash
from bus.streams import (PlacementDrift, claims_bucket, ensure_buckets, ensure_streams,
                         stream_configs)
from tests.supercluster import Supercluster

pytestmark = pytest.mark.asyncio
LAYOUT = regions.parse("na=na,sa,sea,ea,oc,sa_asia;eu=eu,me,af")


@pytest.fixture(scope="module")
def sc(tmp_path_factory):
    cluster = Supercluster(tmp_path_factory.mktemp("layout"), ["na", "eu"])
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def eu_js(sc):
    """A client of the eu region's servers, on a layout made afresh for the test."""
    nc = await nats.connect(sc.url("eu").split(","), connect_timeout=2)
    js = nc.jetstream()
    yield js
    buckets = [subjects.kv_stream(b) for b in (subjects.NODES_BUCKET, subjects.CANCELS_BUCKET,
                                               subjects.CLAIMS_BUCKET, subjects.GRANTS_BUCKET)]
    for name in [c.name for c, _ in stream_configs(LAYOUT)] + ["SPY"] + buckets:
        while True:  # a stream being moved between regions may need a second delete
            try:
                await js.delete_stream(name)
                await js.stream_info(name)
            except NotFoundError:
                break
            await asyncio.sleep(0.2)
    await nc.close()


async def test_each_stream_is_created_in_its_own_region_from_any_client(eu_js):
    await ensure_streams(eu_js, layout=LAYOUT)  # from eu: no stream overflows to it
    for config, region in stream_configs(LAYOUT):
        info = await eu_js.stream_info(config.name)
        assert info.cluster.name == region, config.name
        assert info.config.placement.tags == [f"region:{region}"]


async def test_buckets_are_made_in_the_home_region_whoever_makes_them(eu_js):
    home = LAYOUT.placement(LAYOUT.home)
    await claims_bucket(eu_js, 60, placement=home)  # from eu, before anyone provisioned
    await ensure_buckets(eu_js, LAYOUT, 60)
    for bucket in (subjects.NODES_BUCKET, subjects.CANCELS_BUCKET, subjects.CLAIMS_BUCKET,
                   subjects.GRANTS_BUCKET):
        assert (await eu_js.stream_info(subjects.kv_stream(bucket))).cluster.name == "na"


async def test_a_bucket_made_outside_the_home_region_refuses_to_start(eu_js):
    await eu_js.create_key_value(bucket=subjects.CLAIMS_BUCKET)  # no placement: lands in eu
    with pytest.raises(PlacementDrift, match="bucket claims lives in cluster eu"):
        await ensure_buckets(eu_js, LAYOUT, 60)


async def test_a_region_stream_moved_to_another_region_refuses_to_start(eu_js):
    await ensure_streams(eu_js, layout=LAYOUT)
    info = await eu_js.stream_info("CONTENT_eu")
    info.config.placement = Placement(cluster="na", tags=["region:na"])
    await eu_js.update_stream(info.config)  # NATS moves it, and its data, without a word
    with pytest.raises(PlacementDrift, match="CONTENT_eu"):
        await ensure_streams(eu_js, layout=LAYOUT)


async def test_a_copy_of_a_regions_content_kept_elsewhere_refuses_to_start(eu_js):
    await ensure_streams(eu_js, layout=LAYOUT)
    await eu_js.add_stream(StreamConfig(
        name="SPY", sources=[StreamSource(name="CONTENT_eu")],
        placement=Placement(cluster="na", tags=["region:na"])))
    with pytest.raises(PlacementDrift, match="SPY in cluster na copies CONTENT_eu"):
        await ensure_streams(eu_js, layout=LAYOUT)


async def test_content_past_its_retention_reads_as_expired_not_erased(eu_js):
    await ensure_streams(eu_js, layout=LAYOUT, retention_s=1.0)
    store = ContentStore(eu_js, LAYOUT, retention_s=1.0)
    done = JobCompleted(job_id="j-old", model="m", node_id="n", operator="o", zone="eu",
                        attempt=1, text="gone soon", finish_reason="stop",
                        usage=Usage(prompt_tokens=1, completion_tokens=2), input_hash="i",
                        output_hash=output_hash("gone soon"), signature="s")
    await put_output(eu_js, "eu", done)
    kept = await store.output("eu", "j-old")
    assert kept is not None and kept.text == "gone soon"
    assert 0 < (kept.expires_at - (await store.get("eu", "j-old", "output")).stored_at
                ).total_seconds() <= 1.0
    await asyncio.sleep(1.6)
    assert await store.output("eu", "j-old") is None
    assert not await store.erased("eu", "j-old")
