"""Worker credentials: the admin grants a node its own NATS user.

``inferbus up`` grants its own workers at start; ``inferbus nodes add`` grants an
operator's node later and reloads the embedded server so it takes effect at once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bus import signing, subjects
from bus.config import Settings
from bus.credentials import CredentialStore, WorkerGrant
from cli import natsserver

_NODE_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Granted:
    grant: WorkerGrant
    seed: Path  # the worker's INFERBUS_NATS_NKEY_SEED
    config: Path  # the users file the server reads
    reloaded: bool  # whether a running embedded server re-read it


def node_key_path(settings: Settings, node_name: str) -> Path:
    """Where ``inferbus worker --node-name`` keeps the node's signing key."""
    return settings.data_dir / "node" / f"{subjects.check_token(node_name, 'node name')}.key"


def grant_worker(settings: Settings, zone: str, model: str, node_name: str | None = None,
                 subcloud: str | None = None, public: bool = False,
                 node_id: str | None = None) -> WorkerGrant:
    """Record a worker's grant and make its seed. Without ``node_id`` the node key is
    the local one of ``node_name`` (made if missing), as the worker will load it."""
    subjects.check_token(zone, "zone")
    subjects.check_token(model, "model")
    node_name = node_name or f"{zone}-{model}"
    if node_id is None:
        node_id = signing.node_id(signing.load_or_create_key(node_key_path(settings, node_name)))
    elif not _NODE_ID.match(node_id):
        raise ValueError(f"node id {node_id!r} is not a 64-digit hex ed25519 public key")
    grant = WorkerGrant(node_name, zone, model, node_id, subcloud, public or not subcloud)
    CredentialStore(settings.data_dir).grant_worker(grant)
    return grant


def add(settings: Settings, zone: str, model: str, node_name: str | None = None,
        subcloud: str | None = None, public: bool = False,
        node_id: str | None = None) -> Granted:
    """``inferbus nodes add``: grant, rewrite the users file, reload the embedded server."""
    store = CredentialStore(settings.data_dir)
    store.ensure_service()
    grant = grant_worker(settings, zone, model, node_name, subcloud, public, node_id)
    config = store.write_config()
    return Granted(grant, store.worker_seed(grant.node_name), config,
                   natsserver.reload(settings.data_dir))


def describe(done: Granted) -> str:
    g = done.grant
    where = ("the running `inferbus up` server reloaded it" if done.reloaded else
             "include it from the NATS server's config and reload it (nats-server --signal "
             "reload), or start `inferbus up`")
    return (f"node {g.node_name} (id {g.node_id}) may serve {g.model} from queues "
            f"{', '.join(g.queues())}\n"
            f"NATS seed (the worker's INFERBUS_NATS_NKEY_SEED, keep it secret): {done.seed}\n"
            f"users file: {done.config}; {where}")
