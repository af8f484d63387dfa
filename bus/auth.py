"""NATS permissions of each kind of process, as data, and the server's users block.

Two kinds of nkey user:

- **service** (API, projector, admin CLI, ``inferbus up``): full access. Services
  make the streams, buckets and the ledger's events.
- **worker**: one user per node, allowed exactly what a worker does
  (:func:`worker_permissions`): pull and ack its own queues' consumers (its own
  node queue, its subcloud's pool, its zone and global, for one model), create
  those consumers with their filter pinned, read cancels, put its own heartbeat
  key, and publish on ``node.<its own id>.>``: lease, outcome and model requests
  to the gate, liveness pings, live replies; pull model chunks from the one
  fetch consumer per region's store that the gate shapes for it. Everything else is refused by the server:
  the event log, the claims, the ledger, ``JobSubmitted``, other queues, other
  nodes' subjects and heartbeats, the API's reply inboxes, stream
  create/update/delete/purge, message deletes.

What permissions cannot say (a subject carries no job holder): which job a node
really holds. The gate checks that against the lease before it logs or pays,
and the API against the gate's lease notice before it passes text on.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from bus import regions, subjects
from bus.regions import Layout
from bus.streams import worker_streams



@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish to and subscribe to; anything else is refused."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


@dataclass(frozen=True)
class NatsUser:
    """One nkey user of the server. ``permissions=None`` is full access (services)."""

    label: str  # what the config comment calls it: "service", "worker eu-smol (node ab12…)"
    nkey: str  # public user key, "U..."
    permissions: Permissions | None = None


def worker_permissions(user: str, node_id: str, model: str, queues: Sequence[str],
                       layout: Layout | None = None) -> Permissions:
    """What the worker with nkey ``user``, node ``node_id``, serving ``model`` from
    ``queues`` (``subjects.worker_queues``) may do, and nothing more. ``layout``
    says which stream keeps each queue (its region's, or the global pool)."""
    layout = layout or regions.single()
    consumers = [(layout.queue_stream(q), subjects.consumer_name(q, model), subjects.jobs(q, model))
                 for q in queues]
    streams = dict.fromkeys([*(c[0] for c in consumers), *worker_streams(layout)])
    publish = [subjects.stream_info(s) for s in streams]
    for stream, consumer, filter_subject in consumers:
        publish += [subjects.consumer_create(stream, consumer, filter_subject),
                    subjects.consumer_info(stream, consumer),
                    subjects.pull_next(stream, consumer), subjects.acks(stream, consumer)]
    # Model chunks: only through the fetch consumer the gate makes, per region's store,
    # for a model the grant lists (gate.model_access); never the store itself.
    publish += [subjects.pull_next(subjects.object_stream(layout.model_store(r)),
                                   subjects.fetch_consumer(node_id)) for r in layout.regions]
    publish += [subjects.own_node_subjects(node_id),
                subjects.kv_key(subjects.NODES_BUCKET, node_id)]
    publish += subjects.kv_reads(subjects.CANCELS_BUCKET)
    subscribe = [subjects.below(subjects.inbox_prefix(user)),
                 *(filter_subject for _, _, filter_subject in consumers),  # the doorbell
                 subjects.any_cancel()]
    return Permissions(tuple(publish), tuple(subscribe))


def _quoted(items: Sequence[str], indent: str) -> str:
    # Quoted, so the config parser never reads "$JS..." or "$KV..." as a variable;
    # one a line, so a grant's change reads as a diff.
    inner = f",\n{indent}  ".join(json.dumps(i) for i in items)
    return f"[\n{indent}  {inner}\n{indent}]"


def _user_block(user: NatsUser) -> str:
    lines = [f"    # {user.label}", f"    {{nkey: {json.dumps(user.nkey)}"]
    if user.permissions is not None:
        p = user.permissions
        lines[-1] += ", permissions: {"
        lines += [f"      publish: {{allow: {_quoted(p.publish, '      ')}}}",
                  f"      subscribe: {{allow: {_quoted(p.subscribe, '      ')}}}", "    }"]
    lines[-1] += "}"
    return "\n".join(lines)


def render_authorization(users: Sequence[NatsUser]) -> str:
    """The nats-server ``authorization`` block for ``users`` (a config file of its
    own, or ``include``d from the server's config)."""
    if not users:
        raise ValueError("an authorization block needs at least one user")
    blocks = ",\n".join(_user_block(u) for u in users)
    return ("# Written by inferbus (`inferbus up`, `inferbus nodes add`): NATS users and\n"
            "# what each may do. Regenerated from nats-auth/; edits here are lost.\n"
            f"authorization {{\n  users = [\n{blocks}\n  ]\n}}\n")
