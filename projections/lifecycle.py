"""The job lifecycle: the statuses a job passes through, which event moves it
where, and the rule that an ended job never changes again.

::

    JobSubmitted -> queued      JobCompleted -> completed
    JobStarted   -> running     JobFailed    -> failed
                                JobCancelled -> cancelled
                                JobExpired   -> expired

``running`` is entered only from ``queued`` or ``running`` (a retry's later
attempt); the four terminal statuses never change again, so a late or
duplicated event cannot reopen a finished job (:func:`only_if_active`).
``JobEscalated`` moves a job to another queue, not to another status.

Every read model of jobs is a :class:`JobRows` (how each kind of event
changes its table); :func:`apply_job_event` is the one dispatch from events
to them. The status board, the API and the expiry sweep read statuses by
these names.
"""
from __future__ import annotations

from typing import Iterable, Protocol, Union

from bus.events import (Event, JobCancelled, JobCompleted, JobEscalated, JobExpired, JobFailed,
                        JobStarted, JobSubmitted)
from projections.store import Tx

QUEUED, RUNNING = "queued", "running"
COMPLETED, FAILED, CANCELLED, EXPIRED = "completed", "failed", "cancelled", "expired"
ACTIVE = (QUEUED, RUNNING)
TERMINAL = (COMPLETED, FAILED, CANCELLED, EXPIRED)
Ending = Union[JobCompleted, JobFailed, JobCancelled, JobExpired]
_ENDS: dict[type, str] = {JobCompleted: COMPLETED, JobFailed: FAILED, JobCancelled: CANCELLED,
                          JobExpired: EXPIRED}


def ending(event: Event) -> str | None:
    """The terminal status ``event`` ends its job in; None if it ends none."""
    return _ENDS.get(type(event))


def sql_set(statuses: Iterable[str]) -> str:
    """``('queued', 'running')``: statuses as an SQL list (names are fixed words)."""
    return "(" + ", ".join(f"'{s}'" for s in statuses) + ")"


def only_if_active(table: str) -> str:
    """The condition under which an upsert may change a job's row of ``table``:
    the job has not ended."""
    return f"WHERE {table}.status IN {sql_set(ACTIVE)}"


class JobRows(Protocol):
    """How one job read model changes its rows for each kind of job event.

    Each runs inside the projector's transaction; ``log_zone`` is the zone
    token of the subject the event was logged on (the job's own zone), which
    stands in for a ``JobSubmitted`` not seen (yet)."""

    def submitted(self, tx: Tx, e: JobSubmitted) -> None: ...

    def started(self, tx: Tx, e: JobStarted, log_zone: str | None) -> None: ...

    def escalated(self, tx: Tx, e: JobEscalated) -> None: ...

    def ended(self, tx: Tx, e: Ending, status: str, log_zone: str | None) -> None: ...


def apply_job_event(rows: JobRows, tx: Tx, event: Event, log_zone: str | None) -> bool:
    """Apply ``event`` through ``rows``; False if it is not a job event."""
    if isinstance(event, JobSubmitted):
        rows.submitted(tx, event)
    elif isinstance(event, JobStarted):
        rows.started(tx, event, log_zone)
    elif isinstance(event, JobEscalated):
        rows.escalated(tx, event)
    elif (status := ending(event)) is not None:
        rows.ended(tx, event, status, log_zone)  # type: ignore[arg-type]
    else:
        return False
    return True
