"""Admin commands that talk to a running network: keys, status."""
from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal, InvalidOperation

from api.keys import hash_key, new_key
from api.subclouds import Subclouds
from bus import subjects
from bus.config import Settings
from bus.connection import connect
from bus.content import ContentStore
from bus.subjects import check_token
from bus.credits import MICRO
from bus.events import ApiKeyIssued, ApiKeyRevoked, Event, SubcloudCreated, new_id
from bus.node_record import NodeRecord
from bus.publish import publish_event
from bus.guard import provision
from bus.streams import nodes_bucket, patiently
from bus.zones import ZONES, is_zone
from ledger import open_ledger
from projections import api_keys
from projections.job_status import jobs_of
from projections.readmodels import open_store


async def connect_admin(settings: Settings):
    """The admin CLI's connection to the running network (fails fast, one line)."""
    url = settings.resolved_nats_url()
    try:
        nc = await connect(settings, "inferbus-cli", retry=False, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001 - one clear line for the user
        raise RuntimeError(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from None
    js = nc.jetstream()
    await provision(js, settings)
    return nc, js


async def _log(js, event: Event) -> None:
    """Log ``event``, waiting out a stream that has no leader yet (a cluster just
    made, or electing one): a retry of the same event id is deduplicated."""
    await patiently(lambda: publish_event(js, event), f"log {type(event).__name__}")


async def log_event(settings: Settings, event: Event, zone: str = subjects.GLOBAL) -> None:
    """Log one admin fact (e.g. ``NodeSuspended``) on ``zone``'s subject."""
    nc, js = await connect_admin(settings)
    try:
        await patiently(lambda: publish_event(js, event, zone), f"log {type(event).__name__}")
    finally:
        await nc.close()


def parse_credits(text: str) -> int:
    """'12.5' credits -> micro-credits; a clear error for anything else."""
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a number of credits: {text!r}") from None
    if not amount.is_finite() or amount <= 0 or amount * MICRO != int(amount * MICRO):
        raise ValueError(f"credits must be positive with at most 6 decimals: {text!r}")
    return int(amount * MICRO)


def deposit(settings: Settings, account: str, micro: int, deposit_id: str | None = None):
    """Credit ``account``; the relay in the projector puts the deposit on the log."""
    ledger = open_ledger(settings)
    try:
        return ledger.deposit(account, micro, deposit_id or new_id())
    finally:
        ledger.close()


async def create_key(settings: Settings, account: str, subcloud: str | None = None,
                     micro_credits: int = 0, *, name: str | None = None,
                     admin: bool | None = None, spend_limit: int | None = None,
                     expires_at: datetime | None = None, webhook_url: str | None = None) -> str:
    """Issue a key for ``account`` (optionally with a deposit); only its hash is
    published. ``admin`` None: the account's first live key is its admin key."""
    key = new_key()
    digest = hash_key(key)
    nc, js = await connect_admin(settings)
    try:
        if subcloud and await Subclouds(js).get(subcloud) is None:
            raise ValueError(f"no subcloud {subcloud!r}: `inferbus subclouds create` it first")
        if admin is None:
            admin = not await asyncio.to_thread(_has_live_key, settings, account)
        if micro_credits:  # before the key exists, so the key never works without its credits
            await asyncio.to_thread(deposit, settings, account, micro_credits, f"key-{digest}")
        await _log(js, ApiKeyIssued(key_hash=digest, account=account, subcloud=subcloud,
                                    name=name, admin=admin, spend_limit=spend_limit,
                                    expires_at=expires_at, webhook_url=webhook_url))
    finally:
        await nc.close()
    return key


def _has_live_key(settings: Settings, account: str) -> bool:
    store = open_store(settings)
    try:
        return api_keys.has_live_key(store, account)
    finally:
        store.close()


def list_keys(settings: Settings, account: str) -> list[api_keys.KeyView]:
    """``account``'s keys, newest first, from the read model."""
    store = open_store(settings)
    try:
        return api_keys.keys_of(store, account)
    finally:
        store.close()


async def revoke_key(settings: Settings, key_id: str) -> api_keys.KeyView:
    """Revoke the key whose public id is ``key_id``; every API refuses it within a second."""
    store = await asyncio.to_thread(open_store, settings)
    try:
        found = await asyncio.to_thread(api_keys.keys_with_id, store, key_id)
    finally:
        store.close()
    if len(found) != 1:
        raise LookupError(f"no key {key_id!r}" if not found else
                          f"key id {key_id!r} is ambiguous: give more of its hash")
    view = found[0]
    if view.revoked_at is None:
        nc, js = await connect_admin(settings)
        try:
            await _log(js, ApiKeyRevoked(key_hash=view.key_hash, account=view.account))
        finally:
            await nc.close()
    return view


async def create_subcloud(settings: Settings, name: str, zones: list[str], strict: bool):
    """Publish a new subcloud; a name that exists already is an error."""
    subjects.check_token(name, "subcloud name")
    unknown = [z for z in zones if not is_zone(z) or z == subjects.GLOBAL]
    if not zones or unknown:
        raise ValueError(f"unknown zones {unknown or zones}: choose from {', '.join(ZONES)}")
    nc, js = await connect_admin(settings)
    try:
        if await Subclouds(js).get(name) is not None:
            raise ValueError(f"subcloud {name!r} exists already")
        event = SubcloudCreated(name=name, zones=tuple(zones), strict=strict)
        await _log(js, event)
        return event
    finally:
        await nc.close()


async def forget_account(settings: Settings, account: str) -> tuple[int, int]:
    """Erase the content (prompts, results, check evidence) of every job of
    ``account`` in every region; returns (jobs looked at, jobs that had content).
    The log keeps their hashes, usage and money, so the audit still passes."""
    check_token(account, "account")
    nc, js = await connect_admin(settings)
    store = await asyncio.to_thread(open_store, settings)
    try:
        jobs = await asyncio.to_thread(jobs_of, store, account)
        content = ContentStore(js, settings.layout(), settings.content_retention_s)
        return len(jobs), await content.erase(jobs)
    finally:
        await nc.close()
        store.close()


async def live_nodes(settings: Settings) -> list[NodeRecord]:
    nc, js = await connect_admin(settings)
    try:
        kv = await nodes_bucket(js)
        try:
            keys = await kv.keys()
        except Exception:  # noqa: BLE001 - nats-py raises NoKeysError on an empty bucket
            keys = []
        records = []
        for key in keys:
            entry = await kv.get(key)
            if entry.value:
                records.append(NodeRecord.model_validate_json(entry.value))
        return records
    finally:
        await nc.close()


def run(coro):
    return asyncio.run(coro)
