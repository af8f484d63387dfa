"""An account run by its owner: its keys, its jobs and its usage.

Keys are managed with an admin key of the account (``Principal.admin``); any
key of the account reads its own account's jobs and usage. Keys are events on
the log (``ApiKeyIssued``, ``ApiKeyRevoked``, through :mod:`bus.publish`), so
a key made here works on every API instance at once and a revoked one is
refused by all of them within a round trip (:class:`api.keys.KeyRing`).
Listings come from the read models (:mod:`projections.api_keys`,
:mod:`projections.account_usage`), a few milliseconds behind the log.

Timestamps are Unix seconds and amounts credits (decimals), as in
``GET /v1/jobs/{id}``.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from nats.js import JetStreamContext

from api.account_requests import KeyRequest, group_of
from api.errors import APIError
from api.webhook_targets import check_url
from api.keys import KeyRing, Principal, hash_key, key_id_of, new_key
from bus.credits import credits
from bus.events import ApiKeyIssued, ApiKeyRevoked
from bus.publish import publish_event
from projections import account_usage, api_keys
from projections.api_keys import KeyView
from projections.lifecycle import ACTIVE, TERMINAL
from projections.store import Store

LIST_WAIT_S = 1.0  # how long a just-made key may take to reach the read model


def _unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def _credits(micro: int | None) -> float | None:
    return None if micro is None else float(credits(micro))


def key_item(view: KeyView) -> dict:
    """One key as ``/v1/keys`` shows it (never the key itself)."""
    return {"object": "api_key", "id": view.key_id, "name": view.name,
            "created_at": _unix(view.created_at), "expires_at": _unix(view.expires_at),
            "spend_limit": _credits(view.spend_limit), "spent": _credits(view.spent),
            "revoked": view.revoked_at is not None, "admin": view.admin,
            "subcloud": view.subcloud, "webhook_url": view.webhook_url}


def job_item(line: account_usage.JobLine) -> dict:
    usage = None
    if line.completion_tokens is not None:
        usage = {"prompt_tokens": line.prompt_tokens, "completion_tokens": line.completion_tokens,
                 "total_tokens": (line.prompt_tokens or 0) + line.completion_tokens}
    return {"object": "job", "id": line.job_id, "model": line.model, "status": line.status,
            "created_at": _unix(line.created_at), "finished_at": _unix(line.finished_at),
            "usage": usage, "cost": _credits(line.cost), "zone": line.served_zone or line.zone}


def _admin(who: Principal) -> None:
    if not who.admin:
        raise APIError(403, "Managing keys needs an admin key of this account.",
                       "admin_key_required")


def _within(who: Principal, limit: int | None, expires: datetime | None) -> None:
    """A limited admin key makes keys no freer than itself: else whoever holds it
    could escape its own spend limit or expiry with a key it made."""
    if who.spend_limit is not None and (limit is None or limit > who.spend_limit):
        raise APIError(403, f"this key's spend limit is {_credits(who.spend_limit)} credits; "
                       "the keys it makes need one no higher", "spend_limit_too_high",
                       "spend_limit")
    if who.expires_at is not None and (expires is None or expires > who.expires_at):
        raise APIError(403, "this key expires; the keys it makes must expire no later",
                       "expiry_too_late", "expires_at")


class Accounts:
    """The account endpoints' work, for one API process."""

    def __init__(self, js: JetStreamContext, store: Store, keys: KeyRing,
                 webhooks_to_private: bool = False) -> None:
        self._js, self._store, self._keys = js, store, keys
        self._webhooks_to_private = webhooks_to_private

    async def create_key(self, who: Principal, req: KeyRequest) -> dict:
        _admin(who)
        subcloud = await self._subcloud(who, req.subcloud)
        limit, expires = req.spend_limit_micro(), req.expiry(datetime.now(timezone.utc))
        _within(who, limit, expires)
        webhook = None if req.webhook_url is None else \
            await check_url(req.webhook_url.strip(), self._webhooks_to_private, "webhook_url")
        key = new_key()
        digest = hash_key(key)
        event = ApiKeyIssued(key_hash=digest, account=who.account, subcloud=subcloud,
                             name=req.name, admin=req.admin, spend_limit=limit,
                             expires_at=expires, webhook_url=webhook)
        await publish_event(self._js, event)
        view = KeyView(digest, key_id_of(digest), who.account, event.name, event.admin,
                       event.spend_limit, subcloud, event.occurred_at, event.expires_at, None,
                       webhook)
        return {**key_item(view), "key": key}

    async def list_keys(self, who: Principal) -> dict:
        _admin(who)
        views = await asyncio.to_thread(api_keys.keys_of, self._store, who.account)
        return {"object": "list", "data": [key_item(v) for v in views]}

    async def revoke_key(self, who: Principal, key_id: str) -> dict:
        _admin(who)
        view = await self._own_key(who.account, key_id)
        if view.revoked_at is None:
            event = ApiKeyRevoked(key_hash=view.key_hash, account=who.account)
            await publish_event(self._js, event)
            self._keys.forget(view.key_hash)  # this instance at once; the others on the event
            view = KeyView(**{**view.__dict__, "revoked_at": event.occurred_at})
        return key_item(view)

    async def jobs(self, who: Principal, status: str | None, limit: int,
                   after: str | None) -> dict:
        if status is not None and status not in (*ACTIVE, *TERMINAL):
            raise APIError(400, f"status must be one of {', '.join((*ACTIVE, *TERMINAL))}",
                           "invalid_request_error", "status")
        before = None
        if after:
            created = await asyncio.to_thread(account_usage.job_created, self._store,
                                              who.account, after)
            if created is None:
                raise APIError(400, f"no job {after!r} of this account to page after",
                               "invalid_request_error", "after")
            before = (created, after)
        lines = await asyncio.to_thread(account_usage.recent_jobs, self._store, who.account,
                                        status=status, limit=limit + 1, before=before)
        return {"object": "list", "data": [job_item(j) for j in lines[:limit]],
                "has_more": len(lines) > limit}

    async def usage(self, who: Principal, days: int, group_by: str) -> dict:
        lines = await asyncio.to_thread(account_usage.usage, self._store, who.account, days,
                                        group_of(group_by))
        return {"object": "list", "data": [
            {"day": u.day, "model": u.model, "key_id": u.key_id, "requests": u.requests,
             "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
             "cost": _credits(u.cost)} for u in lines]}

    async def _own_key(self, account: str, key_id: str) -> KeyView:
        # A key made a moment ago may not be in the read model yet: wait briefly.
        deadline = asyncio.get_running_loop().time() + LIST_WAIT_S
        while True:
            view = await asyncio.to_thread(api_keys.key_of, self._store, account, key_id)
            if view is not None or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        if view is None:
            raise APIError(404, f"No key {key_id!r} in this account.", "key_not_found")
        return view

    async def _subcloud(self, who: Principal, wanted: str | None) -> str | None:
        """The new key's subcloud: a key of a subcloud makes keys of it only; an
        account's other keys may name a subcloud one of its keys is bound to."""
        if who.subcloud is not None:
            if wanted not in (None, who.subcloud):
                raise APIError(403, f"this key is bound to subcloud {who.subcloud!r}; its "
                               "keys must be too", "subcloud_not_allowed", "subcloud")
            return who.subcloud
        if wanted is None:
            return None
        views = await asyncio.to_thread(api_keys.keys_of, self._store, who.account)
        if not any(v.subcloud == wanted and v.revoked_at is None for v in views):
            raise APIError(403, f"this account may not use subcloud {wanted!r} (the "
                           "network's admin binds an account to one)", "subcloud_not_allowed",
                           "subcloud")
        return wanted
