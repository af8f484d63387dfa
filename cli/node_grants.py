"""Node grants, as the network's admin manages them.

A grant (node id, operator, zone, model, tier, subcloud, public or not) is
bound to the node's own NATS user (``bus.credentials``: its seed and the
server's users file) and filed in the ``grants`` bucket, which the gate and
the API follow (``bus.grants``): ``inferbus nodes add``, ``list``, ``suspend``
and ``remove`` take effect on a running network within a second. ``inferbus
up`` grants its own workers at start.
"""
from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from bus import signing, subjects
from bus.config import Settings
from bus.credentials import CredentialStore, WorkerGrant, public_key
from bus.events import NodeSuspended
from bus.grants import NodeGrant, file_grant
from bus.streams import grants_bucket
from cli import natsserver

_NODE_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Granted:
    grant: WorkerGrant
    seed: Path  # the worker's INFERBUS_NATS_NKEY_SEED
    config: Path  # the users file the server reads
    reloaded: bool  # whether a running embedded server re-read it
    filed: bool  # whether the running network's grants bucket has it


def node_key_path(settings: Settings, node_name: str) -> Path:
    """Where ``inferbus worker --node-name`` keeps the node's signing key."""
    return settings.data_dir / "node" / f"{subjects.check_token(node_name, 'node name')}.key"


def grant_worker(settings: Settings, zone: str, model: str, node_name: str | None = None,
                 subcloud: str | None = None, public: bool = False,
                 node_id: str | None = None, operator: str = "operator",
                 tier: int = 1, verified: bool = False) -> WorkerGrant:
    """Record a worker's grant and make its seed. Without ``node_id`` the node key is
    the local one of ``node_name`` (made if missing), as the worker will load it."""
    subjects.check_token(zone, "zone")
    subjects.check_token(model, "model")
    subjects.check_token(operator, "operator")
    if not 1 <= tier <= 6:
        raise ValueError(f"tier {tier} is not between 1 and 6")
    node_name = node_name or f"{zone}-{model}"
    if node_id is None:
        node_id = signing.node_id(signing.load_or_create_key(node_key_path(settings, node_name)))
    elif not _NODE_ID.match(node_id):
        raise ValueError(f"node id {node_id!r} is not a 64-digit hex ed25519 public key")
    grant = WorkerGrant(node_name, zone, model, node_id, subcloud, public or not subcloud,
                        operator, tier, verified=verified)
    seed = CredentialStore(settings.data_dir).grant_worker(grant)
    # The network finds the node's connections by its NATS user (verifier/location.py).
    return replace(grant, nats_user=public_key(seed))


async def file_grants(settings: Settings, grants: list[WorkerGrant],
                      removed: list[str] = ()) -> bool:
    """Put ``grants`` (and drop the ``removed`` node ids) in the running network's
    grants bucket; False when no network is reachable (it reads them at start)."""
    from cli.admin import connect_admin  # imports the API's key code: only when filing
    try:
        nc, js = await connect_admin(settings)
    except RuntimeError:
        return False
    try:
        kv = await grants_bucket(js, settings.stream_replicas, settings.home_placement())
        for grant in grants:
            await file_grant(kv, grant.network_grant())
        for node_id in removed:
            await kv.delete(node_id)
        return True
    finally:
        await nc.close()


def add(settings: Settings, zone: str, model: str, node_name: str | None = None,
        subcloud: str | None = None, public: bool = False,
        node_id: str | None = None, operator: str = "operator", tier: int = 1,
        verified: bool = False) -> Granted:
    """``inferbus nodes add``: grant, rewrite the users file, reload the embedded
    server, file the grant with the running network. The node starts on probation
    unless ``verified`` (the admin vouches for it)."""
    store = CredentialStore(settings.data_dir)
    store.ensure_service()
    grant = grant_worker(settings, zone, model, node_name, subcloud, public, node_id,
                         operator, tier, verified)
    config = store.write_config(settings.layout())
    reloaded = natsserver.reload(settings.data_dir)
    filed = asyncio.run(file_grants(settings, [grant])) if _network(settings) else False
    return Granted(grant, store.worker_seed(grant.node_name), config, reloaded, filed)


def find(settings: Settings, node: str) -> WorkerGrant:
    """The grant of the node named ``node`` (its node name, or its id or an id prefix)."""
    found = [g for g in CredentialStore(settings.data_dir).grants()
             if node in (g.node_name, g.node_id) or (len(node) >= 8 and g.node_id.startswith(node))]
    if len(found) != 1:
        raise ValueError(f"no single granted node {node!r} ({len(found)} match)")
    return found[0]


def suspend(settings: Settings, node: str, reason: str = "suspended by the admin") -> WorkerGrant:
    """``inferbus nodes suspend``: no leases, no routing, no NATS user (its connection
    is closed when the server reloads); logged as ``NodeSuspended``."""
    grant = replace(find(settings, node), suspended=True)
    store = CredentialStore(settings.data_dir)
    store.grant_worker(grant)
    store.write_config(settings.layout())
    natsserver.reload(settings.data_dir)
    if _network(settings):
        asyncio.run(file_grants(settings, [grant]))
        from cli import admin
        admin.run(admin.log_event(settings, NodeSuspended(node_id=grant.node_id, reason=reason),
                                  grant.zone))
    return grant


def remove(settings: Settings, node: str) -> WorkerGrant:
    """``inferbus nodes remove``: the grant and the NATS user are gone."""
    grant = find(settings, node)
    store = CredentialStore(settings.data_dir)
    store.remove_worker(grant.node_name)
    store.write_config(settings.layout())
    natsserver.reload(settings.data_dir)
    if _network(settings):
        asyncio.run(file_grants(settings, [], [grant.node_id]))
    return grant


def _network(settings: Settings) -> bool:
    """Whether a NATS server of the network answers now (a connect attempt to a
    server that is not up would wait out its reconnect policy)."""
    try:
        url = settings.resolved_nats_url().split(",")[0]
    except RuntimeError:
        return False
    parsed = urlparse(url if "://" in url else f"nats://{url}")
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222), 1):
            return True
    except OSError:
        return False


def describe(done: Granted) -> str:
    g = done.grant
    where = ("the running `inferbus up` server reloaded it" if done.reloaded else
             "include it from the NATS server's config and reload it (nats-server --signal "
             "reload), or start `inferbus up`")
    filed = ("the running network has the grant" if done.filed else
             "no running network reached: it files the grant when `inferbus up` starts")
    return (f"node {g.node_name} (id {g.node_id}) may serve {g.model} from queues "
            f"{', '.join(g.queues())}, earning for {g.operator} at tier {g.tier}\n"
            f"NATS seed (the worker's INFERBUS_NATS_NKEY_SEED, keep it secret): {done.seed}\n"
            f"users file: {done.config}; {where}; {filed}")


def table(settings: Settings) -> str:
    """``inferbus nodes list``: every grant, with the standing the running network
    gave it (probation, verified, suspended; spot checks passed/failed, strikes) and
    its checked location (unchecked, verified, failed) with why, or the admin's
    record alone when no network answers."""
    standing = asyncio.run(_standing(settings)) if _network(settings) else {}
    rows = [f"{'node':24} {'id':16} {'zone':6} {'model':24} {'operator':16} tier "
            f"{'status':10} {'checks':36} location"]
    for g in CredentialStore(settings.data_dir).grants():
        filed = standing.get(g.node_id) or g.network_grant()
        checks = (f"{filed.passed} passed, {filed.failed} failed, {filed.strikes} strikes"
                  if g.node_id in standing else "-")
        where = filed.location + (f" ({filed.location_note})" if filed.location_note else "")
        rows.append(f"{g.node_name:24} {g.node_id[:16]:16} {g.zone:6} {g.model:24} "
                    f"{g.operator:16} {g.tier:4} {filed.status:10} {checks:36} {where}")
    return "\n".join(rows)


async def _standing(settings: Settings) -> dict[str, NodeGrant]:
    from bus.grants import GrantBook
    from cli.admin import connect_admin
    try:
        nc, js = await connect_admin(settings)
    except RuntimeError:
        return {}
    try:
        kv = await grants_bucket(js, settings.stream_replicas, settings.home_placement())
        book = await GrantBook().follow(kv)
        await book.close()
        return {g.node_id: g for g in book.all()}
    finally:
        await nc.close()
