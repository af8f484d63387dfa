"""The production guard refuses a bus that could lose acknowledged writes, and
says which setting or server to fix, in one line."""
import pytest
from nats.js.api import StreamInfo
from nats.js.errors import NotFoundError

from bus import guard, regions, subjects
from bus.streams import stream_configs
from bus.config import Settings

SERVERS = ("n0", "n1", "n2")
MONITORS = "http://a:8222,http://b:8222,http://c:8222"
STREAMS = tuple(config.name for config, _ in stream_configs(regions.single()))
ALL_STREAMS = (*STREAMS, *(subjects.kv_stream(b) for b in guard.BUCKETS))


def info(name: str, storage: str = "file", replicas: int = 3) -> StreamInfo:
    held = SERVERS[:replicas]
    return StreamInfo.from_response({
        "config": {"name": name, "storage": storage, "num_replicas": replicas},
        "state": {"messages": 0, "bytes": 0, "first_seq": 0, "last_seq": 0,
                  "consumer_count": 0},
        "cluster": {"leader": held[0], "replicas": [{"name": n, "current": True, "active": 0}
                                                    for n in held[1:]]}})


class FakeJetStream:
    """Answers stream_info from a table; a name it lacks is not found."""

    def __init__(self, streams: dict[str, StreamInfo]) -> None:
        self.streams, self.asked = streams, []

    async def stream_info(self, name: str) -> StreamInfo:
        self.asked.append(name)
        if name not in self.streams:
            raise NotFoundError()
        return self.streams[name]


def varz(name: str, sync_always: bool = True) -> dict:
    config = {"store_dir": "/data", "sync_interval": 120_000_000_000}
    if sync_always:
        config["sync_always"] = True
    return {"server_name": name, "jetstream": {"config": config}}


@pytest.fixture
def monitors(monkeypatch):
    """Each monitor URL's /varz document (or an error string), by URL."""
    docs = dict(zip(MONITORS.split(","), (varz(n) for n in SERVERS)))
    monkeypatch.setattr(guard, "read_varz", lambda url: docs[url])
    return docs


def production(**overrides) -> Settings:
    return Settings(**{"nats_url": "nats://x:4222", "production": True, "stream_replicas": 3,
                       "nats_monitor_url": MONITORS, **overrides})


def healthy() -> dict[str, StreamInfo]:
    return {name: info(name) for name in ALL_STREAMS}


async def refusal(settings: Settings, streams: dict[str, StreamInfo]) -> str:
    with pytest.raises(guard.UnsafeDeployment) as caught:
        await guard.refuse_unsafe_bus(settings, FakeJetStream(streams))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("INFERBUS_PRODUCTION=1 refuses to start")
    return message


async def test_without_production_nothing_is_checked():
    js = FakeJetStream({})
    await guard.refuse_unsafe_bus(Settings(nats_url="nats://x:4222"), js)
    assert js.asked == []


async def test_a_three_replica_fsyncing_file_cluster_starts(monitors):
    await guard.refuse_unsafe_bus(production(), FakeJetStream(healthy()))


async def test_buckets_not_made_yet_are_made_later_with_the_checked_replicas(monitors):
    streams = {name: info(name) for name in STREAMS}
    await guard.refuse_unsafe_bus(production(), FakeJetStream(streams))


async def test_fewer_than_three_replicas_in_settings_names_the_setting(monitors):
    message = await refusal(production(stream_replicas=1), healthy())
    assert "INFERBUS_STREAM_REPLICAS is 1; set it to 3" in message


async def test_a_stream_or_bucket_with_one_replica_is_refused(monitors):
    streams = healthy()
    streams["EVENTS"] = info("EVENTS", replicas=1)
    streams["KV_claims"] = info("KV_claims", replicas=1)
    message = await refusal(production(), streams)
    assert "EVENTS, KV_claims have fewer than 3 replicas" in message
    assert "--replicas 3" in message


async def test_a_stream_in_memory_is_refused(monitors):
    streams = healthy()
    streams["JOBS"] = info("JOBS", storage="memory")
    assert "JOBS keep messages in memory" in await refusal(production(), streams)


async def test_a_server_that_does_not_fsync_every_write_is_refused(monitors):
    monitors["http://b:8222"] = varz("n1", sync_always=False)
    message = await refusal(production(), healthy())
    assert "server n1 does not fsync every write" in message
    assert "sync_interval: always" in message


async def test_without_monitor_urls_it_refuses_and_says_why():
    message = await refusal(production(nats_monitor_url=None), healthy())
    assert "INFERBUS_NATS_MONITOR_URL is not set" in message
    assert "cannot see whether servers fsync" in message


async def test_a_server_holding_a_replica_must_be_monitored(monitors):
    del monitors["http://c:8222"]
    message = await refusal(production(nats_monitor_url="http://a:8222,http://b:8222"),
                            healthy())
    assert "server n2 holds inferbus streams but its monitor is not in" in message


async def test_no_readable_monitor_is_refused(monitors):
    for url in list(monitors):
        monitors[url] = "Connection refused"
    message = await refusal(production(), healthy())
    assert "cannot read http://a:8222/varz (Connection refused)" in message


def test_one_server_down_does_not_keep_a_service_from_starting():
    # A restart during a one-server outage: the other servers still keep quorum.
    varz = {"http://a:8222": "Connection refused",
            "http://b:8222": {"server_name": "n1", "jetstream": {"config": {"sync_always": True}}}}
    assert guard.sync_problems(varz, {"n0", "n1"}) == []


def test_the_refusal_is_one_line_and_counts_what_it_leaves_out():
    message = guard.refusal([f"problem {i}" for i in range(5)])
    assert "problem 2" in message and "problem 3" not in message
    assert "and 2 more" in message and "\n" not in message
