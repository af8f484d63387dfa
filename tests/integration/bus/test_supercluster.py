"""A real supercluster on loopback (regions eu, na, ap of one server each, as
``cli/supercluster`` renders them): streams placed by region tag live only on
their region's disks, a placement nobody can serve fails instead of landing
elsewhere, and ``inferbus deploy render`` writes configs nats-server accepts."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nats
import pytest
from nats.js.api import Placement, StreamConfig
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError

from cli.natsserver import binary

ROOT = Path(__file__).parents[3]
NO_SUITABLE_PEERS = 10005


async def connect(url: str) -> nats.NATS:
    return await nats.connect(url.split(","), connect_timeout=2, max_reconnect_attempts=0,
                              allow_reconnect=False)


async def publish(js, subject: str, payload: bytes):
    """Publish, riding out the few ms after a stream's creation in which another
    region may not yet see its interest across the gateway (measured: one
    "no responders" in ~40 fresh starts, gone 13 ms later)."""
    deadline = time.monotonic() + 2
    while True:
        try:
            return await js.publish(subject, payload)
        except NoStreamResponseError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


def eu_stream(name: str) -> StreamConfig:
    return StreamConfig(name=name, subjects=[f"{name.lower()}.>"], num_replicas=1,
                        placement=Placement(cluster="eu", tags=["region:eu"]))


async def test_stream_placed_in_eu_from_na_is_stored_only_on_eu_disks(sc):
    nc = await connect(sc.url("na"))
    js = nc.jetstream()
    info = await js.add_stream(eu_stream("PLACED"))
    assert (info.cluster.name, info.cluster.leader) == ("eu", "eu-1")
    marker = f"prompt-{uuid.uuid4().hex}".encode()
    ack = await publish(js, "placed.x", marker)
    await nc.close()
    assert ack.stream == "PLACED"
    found = sc.find(marker)
    assert found["eu-1"] and all(sc.store_dir("eu-1") in p.parents for p in found["eu-1"])
    assert found["na-1"] == [] and found["ap-1"] == []


@pytest.mark.parametrize("placement", [Placement(cluster="mars", tags=["region:mars"]),
                                       Placement(cluster="eu", tags=["region:na"]),
                                       Placement(tags=["region:mars"])],
                         ids=["unknown-region", "tag-of-another-cluster", "unknown-tag-only"])
async def test_placement_nobody_can_serve_fails_instead_of_landing_elsewhere(sc, placement):
    nc = await connect(sc.url("na"))
    js = nc.jetstream()
    with pytest.raises(BadRequestError) as refused:
        await js.add_stream(StreamConfig(name="NOWHERE", subjects=["nowhere.>"],
                                         placement=placement))
    assert refused.value.err_code == NO_SUITABLE_PEERS
    with pytest.raises(NotFoundError):
        await js.stream_info("NOWHERE")
    await nc.close()


async def test_lost_region_refuses_writes_and_keeps_its_messages_for_its_restart(sc):
    nc = await connect(sc.url("na"))
    js = nc.jetstream()
    await js.add_stream(eu_stream("DURABLE"))
    await publish(js, "durable.x", b"before")
    sc.stop_region("eu")
    with pytest.raises((NoStreamResponseError, NatsTimeout)):
        await js.publish("durable.x", b"while-down", timeout=1)
    sc.start_region("eu")
    await nc.close()
    nc = await connect(sc.url("eu"))
    msg = await nc.jetstream().get_msg("DURABLE", 1)
    assert msg.data == b"before"
    assert (await nc.jetstream().stream_info("DURABLE")).state.messages == 1
    await nc.close()


def render(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "deploy", "render", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_deploy_render_writes_one_valid_config_per_server_joined_by_gateways(tmp_path):
    done = render("--regions", "eu,na,ap", "--servers", "3", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in tmp_path.glob("*.conf"))
    assert names == sorted(f"nats-{r}-{i}.conf" for r in ("eu", "na", "ap") for i in (1, 2, 3))
    text = (tmp_path / "nats-na-2.conf").read_text()
    assert 'server_tags: ["region:na", "az:na-2"]' in text
    assert 'unique_tag: "az:"' in text and "sync_interval: always" in text
    for r in ("eu", "na", "ap"):
        urls = ", ".join(f'"nats://nats-{r}-{i}:7222"' for i in (1, 2, 3))
        assert f"{{name: {r}, urls: [{urls}]}}" in text
    assert "nats-route://nats-na-1:6222" in text and "nats-route://nats-eu-1:6222" not in text
    # nats-server itself accepts every file, with the users file they include.
    shutil.copy(ROOT / "deploy" / "auth.conf.example", tmp_path / "auth.conf")
    env = {**os.environ, "NATS_SYS_PASSWORD": "test"}
    for name in names:
        check = subprocess.run([binary(), "-t", "-c", name], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr + check.stdout


@pytest.mark.parametrize("args", [["--regions", ""], ["--regions", "eu,,na"],
                                  ["--regions", "EU"], ["--regions", "1eu"],
                                  ["--regions", "eu-west"], ["--regions", "eu,eu"],
                                  ["--regions", "eu", "--servers", "0"]],
                         ids=["empty", "empty-item", "upper-case", "digit-first", "dash",
                              "twice", "no-servers"])
def test_deploy_render_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path, args):
    done = render(*args, "--out", str(tmp_path / "out"))
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out").exists()
