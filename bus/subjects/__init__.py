"""Every subject and stream name inferbus uses. No other module spells one.

Layout:
- ``jobs.<zone>.<model>``, ``jobs.<zone>.<pool>.<model>``: the work queues. A
  queue token is a geo-zone, ``global``, one node's own queue
  (``<zone>-node_<id16>``, for dispatch to chosen candidates) or a subcloud's
  private pool (``<zone>-sc_<name>``, or ``global-sc_<name>`` for one that may
  leave its region): the part before ``-`` is the zone whose region stores it.
- ``events.<zone>.<EventType>[.<entity>]``: the immutable event log. Jobs log
  on their submitted zone; account-wide facts (keys) and money on ``global``.
  Keys add their hash so one direct get finds them; a job's events add its
  slot (``j<hex>``, ``bus.partitions``) so each ledger shard's settlement and
  each read-model partition reads its own; a ledger of several shards adds
  ``s<shard>`` to the money it relays. Events carry hashes, usage,
  signatures and money, never a prompt or an output (those are content).
- ``content.<zone>.<job>.<part>``: a job's prompt (``input``) and result
  (``output``), kept for the retention period in the stream ``CONTENT`` of the
  region hosting ``<zone>``, and erasable.

Streams: with one region (the default) ``JOBS``, ``EVENTS``, ``CHECKS`` and
``CONTENT`` hold every zone. With several (``bus.regions``) each region has
``JOBS_<r>``, ``EVENTS_<r>``, ``CHECKS_<r>`` and ``CONTENT_<r>`` for its zones,
placed in its cluster; ``JOBS`` keeps the global pool and ``EVENTS`` the global
events plus every region's log, sourced.
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
  grant, written by the network's admin; ``models``: the model catalog (each
  name's published roots, their state and regions; ``bus.model_store``).
- Object store ``model_chunks`` (``model_chunks_<r>`` per region): content-
  addressed model chunks ``c.<sha256>`` and manifests ``m.<root>``; a node
  reads them only through its own fetch consumer ``fetch_<id16>``, which the
  gate makes for the chunks of a model the node is granted.
"""
from __future__ import annotations

from bus.subjects.tokens import check_token

JOBS_STREAM = "JOBS"
EVENTS_STREAM = "EVENTS"
DEAD_LETTER_STREAM = "DEADLETTER"
CHECKS_STREAM = "CHECKS"
CONTENT_STREAM = "CONTENT"
VERIFIER_DURABLE = "verifier"
VERIFIER_STRIKES_DURABLE = "verifier-strikes"
NODES_BUCKET = "nodes"
CANCELS_BUCKET = "cancels"
CLAIMS_BUCKET = "claims"
GRANTS_BUCKET = "grants"
MODELS_BUCKET = "models"
MODEL_CHUNKS = "model_chunks"
GATE_QUEUE = "gate"  # queue group of the gate processes: each node request is answered once
GLOBAL = "global"

_NODE_QUEUE = "node_"
_HOME = "-"  # zone-name-free separator of a pool queue's home zone and its name
_EVENTS = "events"


def regional(stream: str, region: str) -> str:
    """A region's own copy of ``stream`` (``JOBS_eu``)."""
    return f"{stream}_{check_token(region, 'region')}"


def queue_home(queue: str) -> str:
    """The zone (or ``global``) whose region stores ``queue``'s jobs."""
    return queue.split(_HOME, 1)[0]


def jobs(queue: str, model: str) -> str:
    """The subject of ``queue``'s jobs for ``model``: ``jobs.<zone>.<model>`` for a
    zone (or global), ``jobs.<zone>.<pool>.<model>`` for a node or subcloud pool
    homed in ``<zone>``."""
    home, _, pool = queue.partition(_HOME)
    head = f"jobs.{check_token(home, 'zone')}"
    if pool:
        head += f".{check_token(pool, 'queue')}"
    return f"{head}.{check_token(model, 'model')}"


def queue_of(subject: str) -> tuple[str, str] | None:
    """``(queue, model)`` of a jobs subject (:func:`jobs` read back); None otherwise."""
    tokens = subject.split(".")
    if tokens[0] != "jobs" or len(tokens) not in (3, 4):
        return None
    queue = tokens[1] if len(tokens) == 3 else f"{tokens[1]}{_HOME}{tokens[2]}"
    return queue, tokens[-1]


def zone_jobs(zone: str) -> str:
    """Every queue homed in ``zone``: part of its region's jobs stream."""
    return below(f"jobs.{check_token(zone, 'zone')}")


def zone_events(zone: str) -> str:
    return below(f"{_EVENTS}.{check_token(zone, 'zone')}")


def content(zone: str, job_id: str, part: str) -> str:
    """Where a job's ``input`` or ``output`` is kept (its zone's region's content store)."""
    return f"content.{check_token(zone, 'zone')}.{check_token(job_id, 'job id')}.{part}"


def zone_content(zone: str) -> str:
    return below(f"content.{check_token(zone, 'zone')}")


def job_content(job_id: str) -> str:
    """Every part of one job's content, in any zone (erasing it)."""
    return f"content.*.{check_token(job_id, 'job id')}.*"


def all_content() -> str:
    return "content.>"


def check(zone: str) -> str:
    return f"checks.{check_token(zone, 'zone')}"


def all_checks() -> str:
    return "checks.>"


def node_queue(node_id: str, zone: str) -> str:
    """Node ``node_id``'s own queue, stored in the region of its zone ``zone``."""
    return f"{check_token(zone, 'zone')}{_HOME}{_NODE_QUEUE}{check_token(node_id, 'node id')[:16]}"


def is_node_queue(queue: str) -> bool:
    """Whether ``queue`` is one node's own queue (:func:`node_queue`)."""
    return queue.partition(_HOME)[2].startswith(_NODE_QUEUE)


def subcloud_queue(subcloud: str, home: str = GLOBAL) -> str:
    """A subcloud's private pool: a strict subcloud's in each of its zones (its
    region stores it), any other's in the global pool."""
    return f"{check_token(home, 'zone')}{_HOME}sc_{check_token(subcloud, 'subcloud')}"


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
    """Filter subjects for these event types in every zone, with or without a
    last token (an outcome's slot, a money event's shard: :func:`slot_token`)."""
    return [f for t in event_types for f in (f"{_EVENTS}.*.{t}", f"{_EVENTS}.*.{t}.*")]


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
NODE_MODEL = "model"  # a node's model manifest and fetch requests to the gate


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
    its subcloud's pools (a strict subcloud's in its zone, which never leaves the
    region; a free one's in the global pool), its zone, then global (the last two
    unless private)."""
    own = [node_queue(node_id, zone)]
    if subcloud:
        own += [subcloud_queue(subcloud, zone), subcloud_queue(subcloud)]
    if not subcloud or public:
        own += [check_token(zone, "zone"), GLOBAL]
    return own


def chunk_object(sha256: str) -> str:
    """A model chunk's object name: its content address."""
    return f"c.{sha256}"


def manifest_object(root: str) -> str:
    """A model manifest's object name: its root."""
    return f"m.{root}"


def fetch_consumer(node_id: str) -> str:
    """The one consumer a node reads model chunks through; only the gate shapes it."""
    return f"fetch_{check_token(node_id, 'node id')[:16]}"


def any_cancel() -> str:
    return "control.cancel.*"


# The JetStream API's own subjects live beside these (one home for every subject).
from bus.subjects.jetstream import (acked_stream, acked_stream_sequence, acks,  # noqa: E402
                                    below, consumer_create, consumer_info, inbox_prefix,
                                    kv_key, kv_reads, kv_stream, object_chunks,
                                    object_store_subjects, object_stream, stream_info)
from bus.subjects.channels import event_type_of  # noqa: E402
from bus.subjects.partitioned import (keys_read, matches, read_by_partition,  # noqa: E402
                                     relayed_by_shard, settled_by_shard, shard_token,
                                     slot_token)
