"""``GET /v1/referrals`` and ``GET /v1/subscription``: the caller's account's
referrals and subscription (``docs/referrals.md``), for the key's account only.

The code, ``referred_by`` and the subscription come from the ledger (the
source of truth); the referred accounts and what each earned come from the
read model (``referrals`` table of :mod:`projections.balances`), which follows
the log a moment behind.
"""
from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request

from api.deps import LedgerDep, PrincipalDep
from api.errors import APIError
from bus.credits import credits
from projections.balances import referrals_of
from projections.store import utc

router = APIRouter()


def _iso(value: Any) -> str | None:
    """A timestamp as ISO 8601 UTC (SQLite gives text, PostgreSQL datetimes)."""
    return None if value is None else utc(value).isoformat()


@router.get("/v1/referrals")
async def referrals(who: PrincipalDep, ledger: LedgerDep, request: Request) -> dict:
    """The account's referral code (to share), the accounts that signed up with
    it and the RCP each earned it, and who referred the account, if anyone."""
    code = await asyncio.to_thread(ledger.referral_code, who.account)
    referred_by = await asyncio.to_thread(ledger.referrer_of, who.account)
    rows = await asyncio.to_thread(referrals_of, request.app.state.read_store, who.account)
    referred = [{"account": r["account"], "joined_at": _iso(r["joined_at"]),
                 "rcp_earned": int(r["rcp_earned"])} for r in rows]
    return {"object": "referrals", "code": code, "referred": referred,
            "rcp_earned": sum(r["rcp_earned"] for r in referred), "referred_by": referred_by}


@router.get("/v1/subscription")
async def subscription(who: PrincipalDep, ledger: LedgerDep) -> dict:
    """The account's subscription (404 when it never had one). ``status``:
    ``active``; ``cancelled`` (runs until ``renews_at``, then lapses); ``lapsed``."""
    view = await asyncio.to_thread(ledger.subscription, who.account)
    if view is None:
        raise APIError(404, f"Account {who.account!r} has no subscription.",
                       "subscription_not_found")
    renews_at: datetime | None = view.renews_at
    return {"object": "subscription", "plan": view.plan,
            "credits_per_period": float(credits(view.credits)),
            "period_days": view.period_s / 86400,
            "renews_at": renews_at.isoformat() if renews_at is not None else None,
            "status": view.status}
