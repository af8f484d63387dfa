"""Every subject and stream name inferbus uses. No other module spells one.

Layout:
- ``jobs.<queue>.<model>``: the work queue (stream ``JOBS``). A queue is a
  geo-zone, ``global``, one node's own queue (``node_<id16>``, for dispatch to
  chosen candidates) or a subcloud's private pool (``sc_<name>``).
- ``events.<zone>.<EventType>[.<entity>]``: the immutable event log (stream
  ``EVENTS``). Jobs log on their submitted zone; account-wide facts (keys) on
  ``global``. Keys add their hash so one direct get finds them.
- ``replies.<instance>``: core-NATS inbox of one API instance (not stored).
- ``deadletter.<consumer>``: messages a consumer could not read, with the
  reason (stream ``DEADLETTER``).
- ``control.cancel.<job>``: core-NATS stop signal to the worker running a job.
- ``checks.<zone>``: completed jobs the gate sampled for a spot check, until
  the verifier judges them (stream ``CHECKS``, work queue; ``verifier/``).
- ``node.<node id>.<kind>[.<instance>]``: everything a node says. Its NATS user
  may publish only under its own id, so the subject, not the body, names the
  sender. ``lease`` and ``outcome`` are requests the gate answers (``gate/``),
  ``alive`` its liveness pings, ``live.<instance>`` its deltas and resume
  requests to the API instance waiting on a job.
- KV bucket ``nodes``: live node heartbeats; ``cancels``: jobs asked to stop;
  ``claims``: which node runs a job (one copy of a job runs, however many
  queues it was put on; only the gate writes it); ``grants``: each node's
  grant, written by the network's admin.
"""
from __future__ import annotations

import re

JOBS_STREAM = "JOBS"
EVENTS_STREAM = "EVENTS"
DEAD_LETTER_STREAM = "DEADLETTER"
CHECKS_STREAM = "CHECKS"
VERIFIER_DURABLE = "verifier"
VERIFIER_STRIKES_DURABLE = "verifier-strikes"
NODES_BUCKET = "nodes"
CANCELS_BUCKET = "cancels"
CLAIMS_BUCKET = "claims"
GRANTS_BUCKET = "grants"
GATE_QUEUE = "gate"  # queue group of the gate processes: each node request is answered once
GLOBAL = "global"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_NODE_QUEUE = "node_"
_EVENTS = "events"


def check_token(value: str, what: str) -> str:
    """A subject token must not contain dots, wildcards or spaces."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} may only hold letters, digits, '-' and '_'")
    return value


def jobs(zone: str, model: str) -> str:
    return f"jobs.{check_token(zone, 'zone')}.{check_token(model, 'model')}"


def check(zone: str) -> str:
    return f"checks.{check_token(zone, 'zone')}"


def all_checks() -> str:
    return "checks.>"


def node_queue(node_id: str) -> str:
    return f"{_NODE_QUEUE}{check_token(node_id, 'node id')[:16]}"


def is_node_queue(queue: str) -> bool:
    """Whether ``queue`` is one node's own queue (:func:`node_queue`)."""
    return queue.startswith(_NODE_QUEUE)


def subcloud_queue(subcloud: str) -> str:
    return f"sc_{check_token(subcloud, 'subcloud')}"


def subcloud_created(name: str) -> str:
    return event(GLOBAL, "SubcloudCreated", name)


def all_jobs() -> str:
    return "jobs.>"


def event(zone: str, event_type: str, entity: str | None = None) -> str:
    subject = f"{_EVENTS}.{check_token(zone, 'zone')}.{event_type}"
    return f"{subject}.{check_token(entity, 'entity')}" if entity else subject


def zone_of_event(subject: str) -> str | None:
    """The zone an event was logged on (the ``<zone>`` of
    ``events.<zone>.<EventType>[.<entity>]``); None for any other subject."""
    tokens = subject.split(".")
    return tokens[1] if len(tokens) >= 3 and tokens[0] == _EVENTS else None


def all_events() -> str:
    return f"{_EVENTS}.>"


def events_of(*event_types: str) -> list[str]:
    """Filter subjects for these event types in every zone."""
    return [f"{_EVENTS}.*.{t}" for t in event_types]


def key_issued(key_hash: str) -> str:
    return event(GLOBAL, "ApiKeyIssued", key_hash)


def key_revoked(key_hash: str) -> str:
    return event(GLOBAL, "ApiKeyRevoked", key_hash)


def dead_letter(consumer: str) -> str:
    return f"deadletter.{check_token(consumer, 'consumer')}"


def all_dead_letters() -> str:
    return "deadletter.>"


def cancel(job_id: str) -> str:
    return f"control.cancel.{check_token(job_id, 'job id')}"


def replies(instance: str) -> str:
    return f"replies.{check_token(instance, 'instance')}"


_NODE = "node"
NODE_LEASE, NODE_OUTCOME, NODE_ALIVE, NODE_LIVE = "lease", "outcome", "alive", "live"


def node_says(node_id: str, kind: str) -> str:
    """Where node ``node_id`` sends ``kind`` (``NODE_LEASE``, ``NODE_OUTCOME``,
    ``NODE_ALIVE``): its own id is in the subject, which its permissions pin."""
    return f"{_NODE}.{check_token(node_id, 'node id')}.{kind}"


def all_nodes_say(kind: str) -> str:
    """What every node sends of ``kind``: the gate's subscription."""
    return f"{_NODE}.*.{kind}"


def node_live(node_id: str, reply_to: str) -> str:
    """Where node ``node_id`` sends the live replies of a job whose API instance
    waits on ``reply_to`` (``replies.<instance>``)."""
    instance = reply_to.rsplit(".", 1)[-1]
    return f"{_NODE}.{check_token(node_id, 'node id')}.{NODE_LIVE}.{check_token(instance, 'instance')}"


def live_from_any_node(instance: str) -> str:
    """The API instance's subscription to every node's live replies for it."""
    return f"{_NODE}.*.{NODE_LIVE}.{check_token(instance, 'instance')}"


def own_node_subjects(node_id: str) -> str:
    """Every subject node ``node_id`` may publish on."""
    return f"{_NODE}.{check_token(node_id, 'node id')}.>"


def sender_node(subject: str) -> str | None:
    """The node id a ``node.<id>.…`` subject names (its sender, as the server
    enforces); None for any other subject."""
    tokens = subject.split(".")
    return tokens[1] if len(tokens) >= 3 and tokens[0] == _NODE else None


def consumer_name(zone: str, model: str) -> str:
    """The shared durable pull consumer all workers of one (zone, model) use."""
    return f"work_{check_token(zone, 'zone')}_{check_token(model, 'model')}"


def pull_next(stream: str, consumer: str) -> str:
    """JetStream's API subject for asking a pull consumer for its next message."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def worker_queues(zone: str, node_id: str, subcloud: str | None = None,
                  public: bool = True) -> list[str]:
    """The queues a worker pulls, first choice first: jobs sent to this very node,
    its subcloud's pool, its zone, then global (the last two unless private)."""
    own = [node_queue(node_id)]
    if subcloud:
        own.append(subcloud_queue(subcloud))
    if not subcloud or public:
        own += [check_token(zone, "zone"), GLOBAL]
    return own


# JetStream API and KV subjects, named here so NATS permissions (bus/auth.py)
# can grant exactly what one process does.

def inbox_prefix(user: str) -> str:
    """Root of one nkey user's private reply inboxes, so it hears only its own replies."""
    return f"_INBOX.{check_token(user, 'user')}"


def below(prefix: str) -> str:
    """Every subject under ``prefix``."""
    return f"{prefix}.>"


def stream_info(stream: str) -> str:
    return f"$JS.API.STREAM.INFO.{stream}"


def consumer_create(stream: str, consumer: str, filter_subject: str) -> str:
    """Create-or-update of one named consumer; the filter in the subject pins its filter."""
    return f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.{filter_subject}"


def consumer_info(stream: str, consumer: str) -> str:
    return f"$JS.API.CONSUMER.INFO.{stream}.{consumer}"


def acks(stream: str, consumer: str) -> str:
    """Acks, naks, in-progress and term of the messages one consumer delivered."""
    return f"$JS.ACK.{stream}.{consumer}.>"


def acked_stream_sequence(reply: str) -> int | None:
    """The stream sequence a delivered message's ack subject names, None when
    ``reply`` is not one: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>
    .<ts>.<pending>``, or the v2 form with ``<domain>.<account hash>`` after
    ``ACK`` (and a trailing token)."""
    tokens = reply.split(".")
    if tokens[:2] != ["$JS", "ACK"] or len(tokens) not in (9, 11, 12):
        return None
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def kv_key(bucket: str, key: str) -> str:
    """Put, create, update, delete and purge of one key are publishes on this subject."""
    return f"$KV.{bucket}.{check_token(key, 'key')}"


def kv_reads(bucket: str) -> list[str]:
    """The requests that read a bucket's keys (direct get, or message get)."""
    stream = kv_stream(bucket)
    return [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.STREAM.MSG.GET.{stream}"]


def any_cancel() -> str:
    return "control.cancel.*"
