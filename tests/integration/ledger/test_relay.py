"""The ledger relay puts every money event on the log exactly once, even when
it is killed between the ledger's commit and its publish."""
import pytest

from bus import subjects
from bus.events import parse_event
from bus.events import CREDIT_EVENTS
from bus.publish import ATOMIC_DISABLED, BatchRefused
from ledger import relay
from tests.eventlog import read_log


@pytest.fixture
def js_ledger(js, ledger):
    return js, ledger


def relayed_exactly_once(events, ledger) -> bool:
    expected = [e.event_id for _, e, _ in ledger.bus_events(0, 1000)]
    return [e.event_id for e in events] == expected and len(set(expected)) == len(expected)


async def test_relay_killed_mid_batch_resumes_without_loss_or_repeat(js_ledger, monkeypatch):
    js, ledger = js_ledger
    for i in range(10):
        ledger.deposit(f"acct{i}", 1_000_000)
    nc = js._nc
    real_publish, sent = nc.publish, []

    async def dies_after_four(*args, **kwargs):
        if len(sent) == 4:
            raise ConnectionError("relay killed")  # mid-batch: the commit is never sent
        sent.append(args[0])
        return await real_publish(*args, **kwargs)

    monkeypatch.setattr(nc, "publish", dies_after_four)
    with pytest.raises(ConnectionError):
        await relay.Relay(ledger, js).once(await relay.last_relayed(js))
    monkeypatch.setattr(nc, "publish", real_publish)
    assert not [e for _, e in await read_log(js) if isinstance(e, CREDIT_EVENTS)]  # all or none

    # A new relay process: its position comes from the log itself.
    position = await relay.Relay(ledger, js).once(await relay.last_relayed(js))
    assert position == ledger.max_notification_id()
    await relay.Relay(ledger, js).once(await relay.last_relayed(js))  # nothing left: no-op
    events = [e for _, e in await read_log(js) if isinstance(e, CREDIT_EVENTS)]
    assert len(events) == 10 and relayed_exactly_once(events, ledger)


async def test_without_atomic_batches_the_relay_goes_one_event_at_a_time(js_ledger,
                                                                         monkeypatch):
    js, ledger = js_ledger
    for i in range(10):
        ledger.deposit(f"acct{i}", 1_000_000)

    async def refused(*_args, **_kwargs):
        raise BatchRefused(ATOMIC_DISABLED, "atomic publish is disabled")
    monkeypatch.setattr(relay, "publish_batch", refused)
    real_publish, published = relay.publish_event, []

    async def dies_after_four(*args, **kwargs):
        if len(published) == 4:
            raise ConnectionError("relay killed")  # the ledger committed; the bus never heard
        published.append(args[1])
        return await real_publish(*args, **kwargs)

    monkeypatch.setattr(relay, "publish_event", dies_after_four)
    relayer = relay.Relay(ledger, js)
    with pytest.raises(ConnectionError):
        await relayer.once(await relay.last_relayed(js))
    assert relayer.atomic is False  # from now on, one at a time
    monkeypatch.setattr(relay, "publish_event", real_publish)

    position = await relayer.once(await relay.last_relayed(js))
    assert position == ledger.max_notification_id()
    events = [e for _, e in await read_log(js) if isinstance(e, CREDIT_EVENTS)]
    assert len(events) == 10 and relayed_exactly_once(events, ledger)


async def test_relayed_money_is_logged_globally_and_keeps_its_job_zone(js_ledger):
    js, ledger = js_ledger
    from datetime import datetime, timedelta, timezone
    ledger.deposit("acme", 5_000_000)
    ledger.reserve("acme", "jobz", 1_000_000, key_id="k", zone="sea",
                   deadline=datetime.now(timezone.utc) + timedelta(minutes=1))
    await relay.Relay(ledger, js).once(0)
    info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter="events.*.CreditsReserved")
    assert info.state.subjects == {"events.global.CreditsReserved": 1}  # accounts are global
    msg = await js.get_last_msg(subjects.EVENTS_STREAM, "events.global.CreditsReserved")
    assert parse_event(msg.data).zone == "sea"


async def test_an_event_stream_made_before_atomic_batches_is_given_them(fresh_nats):
    import nats
    from bus.streams import ensure_streams, events_stream_config
    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        old = events_stream_config()
        old.allow_atomic = None
        await js.add_stream(old)
        await ensure_streams(js)
        assert (await js.stream_info(subjects.EVENTS_STREAM)).config.allow_atomic
    finally:
        await nc.close()


async def test_a_small_batch_goes_one_event_at_a_time_and_a_crash_leaves_no_hole(
        js_ledger, monkeypatch):
    js, ledger = js_ledger
    for i in range(6):
        ledger.deposit(f"acct{i}", 1_000_000)

    async def no_batches(*_args, **_kwargs):
        raise AssertionError("a batch under atomic_from is not an atomic batch")
    monkeypatch.setattr(relay, "publish_batch", no_batches)
    real_publish, published = relay.publish_event, []

    async def dies_after_four(*args, **kwargs):
        if len(published) == 4:
            raise ConnectionError("relay killed")
        published.append(args[1])
        return await real_publish(*args, **kwargs)

    monkeypatch.setattr(relay, "publish_event", dies_after_four)
    relayer = relay.Relay(ledger, js)
    relayer.atomic_from = relay.ATOMIC_FROM
    with pytest.raises(ConnectionError):
        await relayer.once(await relay.last_relayed(js))
    # What reached the log is the batch's first four, in order: no hole to resume after.
    first = [e.event_id for _, e, _ in ledger.bus_events(0, 1000)][:4]
    assert [e.event_id for _, e in await read_log(js) if isinstance(e, CREDIT_EVENTS)] == first
    monkeypatch.setattr(relay, "publish_event", real_publish)

    position = await relayer.once(await relay.last_relayed(js))
    assert position == ledger.max_notification_id()
    events = [e for _, e in await read_log(js) if isinstance(e, CREDIT_EVENTS)]
    assert len(events) == 6 and relayed_exactly_once(events, ledger)
    assert relayer.atomic  # one at a time by choice, not because the stream refused


async def test_the_relay_sends_small_batches_singly_on_a_one_replica_file_stream(js_ledger):
    import asyncio
    js, ledger = js_ledger
    ledger.deposit("acme", 1_000_000)
    relayer, stop = relay.Relay(ledger, js), asyncio.Event()
    running = asyncio.create_task(relayer.run(stop))
    try:
        for _ in range(100):
            if [e for _, e in await read_log(js) if isinstance(e, CREDIT_EVENTS)]:
                break
            await asyncio.sleep(0.05)
        assert relayer.atomic and relayer.atomic_from == relay.ATOMIC_FROM
    finally:
        stop.set()
        await running
    assert relayed_exactly_once(
        [e for _, e in await read_log(js) if isinstance(e, CREDIT_EVENTS)], ledger)
