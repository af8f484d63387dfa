"""The account endpoints: keys an account manages itself, its jobs, its usage.

- ``POST /v1/keys`` (admin key): ``{name, spend_limit, expires_at |
  expires_in_days, subcloud, admin}``, all optional -> the key's item plus
  ``key``, shown this once.
- ``GET /v1/keys`` (admin key) -> ``{"object": "list", "data": [item, ...]}``,
  each ``{id, name, created_at, expires_at, spend_limit, spent, revoked,
  admin, subcloud}``.
- ``DELETE /v1/keys/{id}`` (admin key) -> the item, ``revoked: true``; every
  API instance refuses the key within a second.
- ``GET /v1/jobs?status=&limit=&after=`` -> the account's jobs, newest first
  (``after``: the last id of the previous page).
- ``GET /v1/usage?days=30&group_by=day|model|key`` -> requests, tokens and
  cost per group.

The work is :class:`api.account_serving.Accounts`.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api.account_requests import KeyRequest
from api.account_serving import Accounts
from api.deps import PrincipalDep

router = APIRouter()


async def accounts(request: Request) -> Accounts:
    return request.app.state.accounts


AccountsDep = Annotated[Accounts, Depends(accounts)]


@router.post("/v1/keys")
async def create_key(body: KeyRequest, who: PrincipalDep, accounts: AccountsDep) -> dict:
    return await accounts.create_key(who, body)


@router.get("/v1/keys")
async def list_keys(who: PrincipalDep, accounts: AccountsDep) -> dict:
    return await accounts.list_keys(who)


@router.delete("/v1/keys/{key_id}")
async def revoke_key(key_id: str, who: PrincipalDep, accounts: AccountsDep) -> dict:
    return await accounts.revoke_key(who, key_id)


@router.get("/v1/jobs")
async def list_jobs(who: PrincipalDep, accounts: AccountsDep,
                    status: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20,
                    after: Annotated[str | None, Query(max_length=128)] = None) -> dict:
    return await accounts.jobs(who, status, limit, after)


@router.get("/v1/usage")
async def usage(who: PrincipalDep, accounts: AccountsDep,
                days: Annotated[int, Query(ge=1, le=366)] = 30,
                group_by: Annotated[str, Query(max_length=32)] = "day") -> dict:
    return await accounts.usage(who, days, group_by)
