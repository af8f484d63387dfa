"""What the subject layout answers besides spelling subjects: which queue is one
node's own, which zone an event was logged on, which stream sequence an ack
subject names."""
from bus import subjects


def test_a_node_queue_is_told_apart_from_zones_pools_and_global():
    own = subjects.node_queue("ab" * 32, "sa_asia")
    assert subjects.is_node_queue(own) and own == "sa_asia-node_" + "ab" * 8
    for queue in ("eu", subjects.GLOBAL, subjects.subcloud_queue("acme"),
                  subjects.subcloud_queue("acme", "eu")):
        assert not subjects.is_node_queue(queue)


def test_a_pool_queue_is_stored_under_its_home_zone_and_reads_back():
    for queue, subject in (("eu", "jobs.eu.m"), ("global", "jobs.global.m"),
                           (subjects.node_queue("cd" * 32, "me"), "jobs.me.node_" + "cd" * 8 + ".m"),
                           (subjects.subcloud_queue("acme", "eu"), "jobs.eu.sc_acme.m"),
                           (subjects.subcloud_queue("acme"), "jobs.global.sc_acme.m")):
        assert subjects.jobs(queue, "m") == subject
        assert subjects.queue_of(subject) == (queue, "m")
        assert subjects.queue_home(queue) == subject.split(".")[1]
    assert subjects.queue_of("events.eu.JobStarted") is None
    assert subjects.queue_of("jobs.eu.a.b.c") is None


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
    assert subjects.acked_stream("$JS.ACK.JOBS_eu.c.1.42.7.1700000000.3") == "JOBS_eu"
    assert subjects.acked_stream("$JS.ACK.hub.HASH.JOBS.c.1.42.7.1700000000.3.token") == "JOBS"
    assert subjects.acked_stream("_INBOX.abc") is None
