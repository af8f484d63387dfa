"""Many small aggregates' stored events in one query.

A group resolution reads every reservation it names before deciding; through
eventsourcing that is one SELECT (one transaction, one pooled connection, on
PostgreSQL one round trip) per reservation, more than the group's one write
costs. Here the same rows come back from one ``IN``/``= ANY`` query against
the recorder's own table. Only for the stores this project uses (SQLite,
PostgreSQL); any other recorder answers None and the caller loads one by one.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder
from psycopg import sql

CHUNK = 500  # ids per query: far below SQLite's bound on parameters


def select_many(recorder: Any, ids: Sequence[UUID]) -> dict[UUID, list[StoredEvent]] | None:
    """Every stored event of each of ``ids`` in version order (absent ids: no
    key), or None when ``recorder`` is not one this module can query."""
    if isinstance(recorder, SQLiteAggregateRecorder):
        select = _sqlite
    elif isinstance(recorder, PostgresAggregateRecorder):
        select = _postgres
    else:
        return None
    found: dict[UUID, list[StoredEvent]] = defaultdict(list)
    for i in range(0, len(ids), CHUNK):
        for originator_id, version, topic, state in select(recorder, ids[i:i + CHUNK]):
            oid = originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
            found[oid].append(StoredEvent(originator_id=oid, originator_version=version,
                                          topic=topic, state=bytes(state)))
    return found


def _sqlite(recorder: SQLiteAggregateRecorder, ids: Sequence[UUID]) -> list[tuple]:
    marks = ",".join("?" * len(ids))
    with recorder.datastore.transaction(commit=False) as c:
        c.execute(f"SELECT originator_id, originator_version, topic, state "  # noqa: S608
                  f"FROM {recorder.events_table_name} WHERE originator_id IN ({marks}) "
                  f"ORDER BY originator_id, originator_version", [i.hex for i in ids])
        return [tuple(row) for row in c.fetchall()]


def _postgres(recorder: PostgresAggregateRecorder, ids: Sequence[UUID]) -> list[tuple]:
    query = sql.SQL("SELECT originator_id, originator_version, topic, state FROM {}.{} "
                    "WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version"
                    ).format(sql.Identifier(recorder.datastore.schema),
                             sql.Identifier(recorder.events_table_name))
    with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(query, [list(ids)])
        return [(r["originator_id"], r["originator_version"], r["topic"], r["state"])
                for r in curs.fetchall()]
