"""What a client may send to the account endpoints, checked before anything is
logged: a field this API does not know is a 400 naming it, as is a limit, an
expiry or a name out of bounds."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.errors import APIError
from bus.bounds import MAX_MICRO
from bus.credits import MICRO
from projections.account_usage import GROUPS

MAX_EXPIRY_DAYS = 3650
MAX_CREDITS = Decimal(MAX_MICRO) / MICRO


class KeyRequest(BaseModel):
    """``POST /v1/keys``: every field optional. ``spend_limit`` is in credits;
    give ``expires_at`` (Unix seconds or ISO 8601) or ``expires_in_days``."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=64)
    spend_limit: Decimal | None = Field(default=None, gt=0, le=MAX_CREDITS, allow_inf_nan=False)
    expires_at: datetime | None = None
    expires_in_days: int | None = Field(default=None, ge=1, le=MAX_EXPIRY_DAYS)
    subcloud: str | None = Field(default=None, min_length=1, max_length=64)
    admin: bool = False
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2048)

    @field_validator("name")
    @classmethod
    def _printable(cls, name: str | None) -> str | None:
        if name is not None and not name.isprintable():
            raise ValueError("a key's name must be printable text")
        return name

    @field_validator("spend_limit")
    @classmethod
    def _micro(cls, limit: Decimal | None) -> Decimal | None:
        if limit is not None and limit * MICRO != int(limit * MICRO):
            raise ValueError("credits have at most 6 decimals")
        return limit

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyRequest:
        if self.expires_at is not None and self.expires_in_days is not None:
            raise ValueError("give expires_at or expires_in_days, not both")
        return self

    def spend_limit_micro(self) -> int | None:
        return None if self.spend_limit is None else int(self.spend_limit * MICRO)

    def expiry(self, now: datetime) -> datetime | None:
        """When the key stops working; a moment already past is a 400."""
        if self.expires_in_days is not None:
            return now + timedelta(days=self.expires_in_days)
        if self.expires_at is None:
            return None
        at = self.expires_at if self.expires_at.tzinfo else \
            self.expires_at.replace(tzinfo=timezone.utc)
        if at <= now or at > now + timedelta(days=MAX_EXPIRY_DAYS):
            raise APIError(400, f"expires_at must lie in the next {MAX_EXPIRY_DAYS} days",
                           "invalid_request", "expires_at")
        return at


def group_of(group_by: str) -> tuple[str, ...]:
    """``day``, ``model``, ``key`` or a comma-separated mix of them."""
    groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
    if not groups or any(g not in GROUPS for g in groups):
        raise APIError(400, f"group_by takes {', '.join(GROUPS)} (comma-separated)",
                       "invalid_request", "group_by")
    return groups
