"""What the subject layout answers besides spelling subjects: which queue is one
node's own, which zone an event was logged on, which stream sequence an ack
subject names."""
from bus import subjects


def test_a_node_queue_is_told_apart_from_zones_pools_and_global():
    own = subjects.node_queue("ab" * 32)
    assert subjects.is_node_queue(own) and own == "node_" + "ab" * 8
    for queue in ("eu", subjects.GLOBAL, subjects.subcloud_queue("acme")):
        assert not subjects.is_node_queue(queue)


def test_the_zone_of_an_event_comes_from_its_log_subject_only():
    assert subjects.zone_of_event(subjects.event("sea", "JobStarted")) == "sea"
    assert subjects.zone_of_event(subjects.key_issued("ff")) == subjects.GLOBAL
    assert subjects.zone_of_event(subjects.jobs("eu", "m")) is None
    assert subjects.zone_of_event("events.eu") is None


def test_an_ack_subject_names_its_stream_sequence_in_both_forms():
    assert subjects.acked_stream_sequence("$JS.ACK.EVENTS.c.1.42.7.1700000000.3") == 42
    assert subjects.acked_stream_sequence(
        "$JS.ACK.hub.ACCOUNTHASH.EVENTS.c.1.42.7.1700000000.3.token") == 42
    assert subjects.acked_stream_sequence("_INBOX.abc") is None
