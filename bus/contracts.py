"""The base of every message shape: frozen, strict contracts, and events with ids."""
from __future__ import annotations

from datetime import datetime, timezone
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field

from bus.bounds import Id


def _now() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid4().hex


class Contract(BaseModel):
    """A frozen, strict message shape shared between processes."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Contract):
    event_id: Id = Field(default_factory=new_id)
    occurred_at: datetime = Field(default_factory=_now)
