"""The read models split into partitions, each kept by its own consumer under its
own position, so that adding partitions adds read-model throughput as adding
ledger shards adds settlement throughput.

With one ledger shard (``INFERBUS_LEDGER_PARTITIONS=1``, the default) there is
one partition, ``jobs``, reading the whole log. With ``n`` shards, partition
``k`` reads what ledger shard ``k``'s accounts and jobs log: every event of a
job of one of its slots (a job's events carry its slot, ``bus.partitions``)
and the money shard ``k`` relays (:func:`bus.subjects.read_by_partition`); a
last one, ``keys-of-n``, reads API keys. Each partition's projector decodes and
applies only its own events and may run in its own process
(``inferbus projector --partition K``).

All partitions write one store, so every reader (the API, the status board)
reads one database as before. The rows a partition writes are its own: a job's
rows come from its job's events and its account's money (one slot), an
account's from its own shard. Two kinds of rows are also written by another
partition, and both commute: account and operator totals move by added deltas
only (an operator's points, a referrer's reward), and a referral row is filled
by its account's link where empty and added to by the referrer's rewards. So
the partitions may run at any pace: whatever interleaving they applied, the
rows equal those of applying each partition's events up to its position, in
log order, which is how ``inferbus audit`` rebuilds and compares them.

A store's positions belong to one layout: a projector refuses a store that
holds positions of another (:func:`check_layout`), since events it skipped as
another partition's would never be applied. :func:`serve` is the read-model
service: one projector per partition.
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from nats.aio.client import Client

from bus import subjects
from bus.events import Event, parse_event
from bus.partitions import check_partitions, slots_of
from projections.projector import Projector
from projections.readmodels import POSITION, apply_all
from projections.replay import Delivery
from projections.store import Store, Tx, read_position, write_position

log = logging.getLogger("inferbus.projections")
_NAME = re.compile(r"^(jobs|jobs-\d+-of-\d+|keys-of-\d+)$")


class LayoutRefused(RuntimeError):
    """The store holds the positions of another partition count."""


@dataclass(frozen=True)
class Partition:
    """One read-model partition: its tracking row and the subjects it reads. Every
    partition's projector receives every event (one server filter of several
    wildcards cost the server more than the whole log: ``projections.projector``)
    and keeps those :meth:`holds` picks out, here in the client."""

    name: str
    reads: tuple[str, ...]  # subject patterns, matched by ``holds``, not by the server

    def holds(self, subject: str) -> bool:
        return any(subjects.matches(f, subject) for f in self.reads)


def layout(n: int) -> tuple[Partition, ...]:
    """The partitions of a deployment of ``n`` ledger shards."""
    if check_partitions(n) == 1:
        return (Partition(POSITION, (subjects.all_events(),)),)
    return (*(Partition(f"jobs-{k}-of-{n}", tuple(subjects.read_by_partition(k, slots_of(k, n))))
              for k in range(n)),
            Partition(f"keys-of-{n}", tuple(subjects.keys_read())))


def is_position(name: str) -> bool:
    """Whether a tracking row is a read-model partition's position, of any layout."""
    return _NAME.match(name) is not None


def stored_positions(tx: Tx) -> dict[str, int]:
    """Every partition position a store holds, of any layout."""
    return {r["projection"]: int(r["position"])
            for r in tx.query("SELECT projection, position FROM tracking")
            if is_position(r["projection"])}


def check_layout(tx: Tx, parts: Sequence[Partition]) -> None:
    """Raise :class:`LayoutRefused` if the store applied events under another layout."""
    mine = {p.name for p in parts}
    other = sorted(name for name, pos in stored_positions(tx).items()
                   if name not in mine and pos > 0)
    if other:
        raise LayoutRefused(
            f"the read models were built with another partition count ({', '.join(other)}), "
            f"not {len(parts) if len(parts) == 1 else len(parts) - 1}: keep "
            "INFERBUS_LEDGER_PARTITIONS as it was, or rebuild them into an empty store")


def apply_routed(store: Store, deliveries: Sequence[Delivery], parts: Sequence[Partition],
                 cuts: Mapping[str, int], observe=None) -> dict[str, int]:
    """Apply ``deliveries`` (in log order) to every partition that holds them, each
    up to its cut in ``cuts`` and past its stored position, in one transaction;
    returns the positions. ``observe`` sees every delivery once with its parsed
    event (None if malformed), whoever holds it: the audit's checker reads them all."""
    with store.transaction() as tx:
        start = {p.name: read_position(tx, p.name, lock=True) for p in parts}
        position = dict(start)
        for d in deliveries:
            owners = [p.name for p in parts
                      if position[p.name] < d.seq <= cuts.get(p.name, 0) and p.holds(d.subject)]
            if not owners and observe is None:
                continue
            try:
                event: Event | None = parse_event(d.data)
            except ValueError as exc:
                if owners:
                    log.warning("skipping malformed event at stream sequence %d on %s: %s",
                                d.seq, d.subject, exc)
                event = None
            for name in owners:
                if event is not None:
                    apply_all(tx, event, d.subject)
                position[name] = d.seq
            if observe is not None:
                observe(d, event)
        for name, seq in position.items():
            if seq != start[name]:
                write_position(tx, name, seq)
    return position


class Resumable:
    """Where a rebuild cut at ``cuts`` can be carried on from by a later audit:
    just before the first event some partition holds beyond its cut. Every event
    up to there is applied wherever it belongs, so a later rebuild reads on from
    there, each partition skipping what it holds already. Shown the rebuild's
    batches in order (:meth:`see`); ``last`` is where to resume."""

    def __init__(self, parts: Sequence[Partition], cuts: Mapping[str, int]) -> None:
        self._parts, self._cuts = parts, cuts
        self.last: Delivery | None = None
        self._one, self._stopped = len(parts) == 1, False

    def see(self, head: Sequence[Delivery]) -> None:
        if self._one:  # one partition: the batches end at its cut already
            self.last = head[-1] if head else self.last
            return
        if self._stopped:
            return
        for d in head:
            if any(d.seq > self._cuts[p.name] and p.holds(d.subject) for p in self._parts):
                self._stopped = True  # and stays: `last` is the one before
                return
            self.last = d


async def serve(nc: Client, store: Store, stop: asyncio.Event, partitions: int = 1,
                only: Sequence[int] | None = None) -> None:
    """The read-model service: keep ``store`` current until ``stop``, over ``nc``
    (a service's connection: see ``bus.guard.connect_service``), with one
    projector per partition of a deployment of ``partitions`` ledger shards;
    ``only``: these partitions' (the keys partition goes with partition 0)."""
    parts = layout(partitions)
    chosen = [p for i, p in enumerate(parts) if only is None or i in only
              or (i == len(parts) - 1 and partitions > 1 and 0 in only)]
    await asyncio.gather(*(Projector(
        store, nc.jetstream(), projection=p.name, holds=None if partitions == 1 else p.holds,
        check=lambda tx: check_layout(tx, parts)).run(stop) for p in chosen))
    log.info("projector stopped")
