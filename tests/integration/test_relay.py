"""The ledger relay puts every money event on the log exactly once, even when
it is killed between the ledger's commit and its publish."""
import pytest

from bus import relay, subjects
from bus.events import CREDIT_EVENTS
from tests.eventlog import read_log


@pytest.fixture
def js_ledger(js, ledger):
    return js, ledger


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

    events = [e for _, e in await read_log(js) if isinstance(e, CREDIT_EVENTS)]
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
