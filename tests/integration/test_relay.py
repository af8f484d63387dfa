"""The ledger relay puts every money event on the log exactly once, even when
it is killed between the ledger's commit and its publish."""
import nats
import pytest

from bus import relay, subjects
from bus.config import Settings
from bus.events import CREDIT_EVENTS, parse_event
from bus.ledger import Ledger
from bus.streams import ensure_streams


@pytest.fixture
async def js_ledger(fresh_nats, tmp_path):
    nc = await nats.connect(fresh_nats.url)
    js = nc.jetstream()
    await ensure_streams(js)
    ledger = Ledger.open(Settings(data_dir=tmp_path, nats_url=fresh_nats.url))
    yield js, ledger
    await nc.close()
    ledger.close()


async def credit_events_on_log(js) -> list:
    names = [e.__name__ for e in CREDIT_EVENTS]
    sub = await js.subscribe(subjects.all_events(), ordered_consumer=True)
    total = (await js.stream_info(subjects.EVENTS_STREAM)).state.messages
    events = [parse_event((await sub.next_msg(timeout=5)).data) for _ in range(total)]
    await sub.unsubscribe()
    return [e for e in events if type(e).__name__ in names]


async def test_relay_killed_mid_batch_resumes_without_loss_or_repeat(js_ledger, monkeypatch):
    js, ledger = js_ledger
    for i in range(10):
        ledger.deposit(f"acct{i}", 1_000_000)
    real_publish, published = relay.publish_event, []

    async def dies_after_four(*args, **kwargs):
        if len(published) == 4:
            raise ConnectionError("relay killed")  # the ledger committed; the bus never heard
        published.append(args[1])
        return await real_publish(*args, **kwargs)

    monkeypatch.setattr(relay, "publish_event", dies_after_four)
    with pytest.raises(ConnectionError):
        await relay.relay_once(ledger, js, await relay.last_relayed(js))
    monkeypatch.setattr(relay, "publish_event", real_publish)

    # A new relay process: its position comes from the log itself.
    position = await relay.relay_once(ledger, js, await relay.last_relayed(js))
    assert position == ledger.max_notification_id()
    await relay.relay_once(ledger, js, await relay.last_relayed(js))  # nothing left: no-op

    events = await credit_events_on_log(js)
    expected = [e for _, e, _ in ledger.bus_events(0, 1000)]
    assert [e.event_id for e in events] == [e.event_id for e in expected]
    assert len({e.event_id for e in events}) == len(events) == 10


async def test_relayed_events_carry_the_job_zone(js_ledger):
    js, ledger = js_ledger
    from datetime import datetime, timedelta, timezone
    ledger.deposit("acme", 5_000_000)
    ledger.reserve("acme", "jobz", 1_000_000, key_id="k", zone="sea",
                   deadline=datetime.now(timezone.utc) + timedelta(minutes=1))
    await relay.relay_once(ledger, js, 0)
    info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter="events.sea.>")
    assert info.state.subjects == {"events.sea.CreditsReserved": 1}
