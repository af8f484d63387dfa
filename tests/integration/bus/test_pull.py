"""Raw pull requests on a real JetStream consumer: a request brings what is
stored now, ends with a status when that is less than asked, and the next
request starts a list of its own while the last one's stays with its reader."""
from __future__ import annotations

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus import subjects
from bus.events import JobExpired
from bus.publish import publish_event
from bus.pull import Pull, stream_sequence


async def consumer(js) -> str:
    info = await js.add_consumer(subjects.EVENTS_STREAM, ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
        filter_subject=subjects.all_events()))
    return info.name


async def test_a_request_brings_what_is_stored_and_the_next_starts_a_list_of_its_own(js):
    stored = [await publish_event(js, JobExpired(job_id=f"j{i}", zone="eu"), "eu")
              for i in range(5)]
    pull = await Pull(js._nc, subjects.EVENTS_STREAM, await consumer(js)).start()
    try:
        await pull.request(3)
        assert await pull.wait(5) and pull.status is None  # filled: no status
        first = pull.messages
        await pull.request(10)  # before the first batch is read: it stays as it was
        assert await pull.wait(5)
        assert [stream_sequence(m) for m in first] == [a.seq for a in stored[:3]]
        assert [stream_sequence(m) for m in pull.messages] == [a.seq for a in stored[3:]]
        assert pull.status is not None and pull.status.startswith("404")  # fewer than asked
        await pull.request(1)
        assert await pull.wait(5) and pull.messages == [] and pull.status.startswith("404")
    finally:
        await pull.close()


async def test_a_stored_message_with_a_status_header_is_a_message_not_the_end(js):
    # Only the server's status answers have no payload; a publisher's own "Status"
    # header must neither end a request nor hide the message from its consumer.
    await js.publish(subjects.event("eu", "JobExpired"), b'{"not": "a status"}',
                     headers={"Status": "404", "Description": "No Messages"})
    pull = await Pull(js._nc, subjects.EVENTS_STREAM, await consumer(js)).start()
    try:
        await pull.request(2)
        assert await pull.wait(5)
        assert [m.data for m in pull.messages] == [b'{"not": "a status"}']
        assert pull.status is not None and pull.status.startswith("404")  # the real end
    finally:
        await pull.close()
