"""NATS credentials on disk: nkey seeds and worker grants under ``<data dir>/nats-auth/``.

Layout (seeds mode 0600, made once and kept, like node keys):

- ``service.seed``: the service user (API, projector, admin CLI). A process whose
  ``INFERBUS_NATS_NKEY_SEED`` is unset uses it when it exists (bus/connection.py).
- ``workers/<node name>.seed`` and ``workers/<node name>.json``: one worker's user
  and its grant (zone, model, node id, subcloud), from which its permissions are
  derived (bus/auth.py).
- ``auth.conf``: the server's ``authorization`` block for all of them, rewritten by
  :meth:`CredentialStore.write_config`; a server reloads it on SIGHUP.

A worker's nkey is not its node signing key: a server signs-in a client by
having it sign a server-chosen nonce, and that must never be able to produce a
result signature.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import nkeys

from bus import subjects
from bus.auth import NatsUser, render_authorization, worker_permissions
from bus.grants import NodeGrant
from bus.regions import Layout

AUTH_DIR = "nats-auth"
SERVICE_SEED = "service.seed"
CONFIG_FILE = "auth.conf"


def new_user_seed() -> bytes:
    """A fresh nkey user seed (``SU...``) from 32 random bytes."""
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)


def public_key(seed_path: Path) -> str:
    """The public user key (``U...``) of the seed in ``seed_path``."""
    pair = nkeys.from_seed(bytearray(seed_path.read_bytes().strip()))
    try:
        return pair.public_key.decode()
    finally:
        pair.wipe()


def load_or_create_seed(path: Path) -> str:
    """The public key of the seed at ``path``, made (mode 0600) when missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return public_key(path)
        with os.fdopen(fd, "wb") as fh:
            fh.write(new_user_seed() + b"\n")
    return public_key(path)


@dataclass(frozen=True)
class WorkerGrant:
    """What one node's worker is allowed to serve: its permissions follow from it."""

    node_name: str
    zone: str
    model: str
    node_id: str  # hex ed25519 public key of the node (bus/signing.py)
    subcloud: str | None = None
    public: bool = True
    operator: str = "operator"  # the account its RCP goes to
    tier: int = 1
    suspended: bool = False  # no NATS user while suspended
    verified: bool = False  # the admin vouches for it: no probation
    # Its NATS user's public key, read from its seed (``CredentialStore.grants``), never
    # written to the grant's file: the seed is what the server's users file has.
    nats_user: str | None = None

    def queues(self) -> list[str]:
        return subjects.worker_queues(self.zone, self.node_id, self.subcloud, self.public)

    def network_grant(self) -> NodeGrant:
        """The grant as services read it (``bus.grants``, the ``grants`` bucket)."""
        return NodeGrant(node_id=self.node_id, node_name=self.node_name, operator=self.operator,
                         zone=self.zone, models=(self.model,), tier=self.tier,
                         subcloud=self.subcloud, public=self.public, nats_user=self.nats_user,
                         status="suspended" if self.suspended else
                         "verified" if self.verified else "probation")


class CredentialStore:
    """The ``nats-auth`` folder of one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / AUTH_DIR

    @property
    def service_seed(self) -> Path:
        return self.root / SERVICE_SEED

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    def worker_seed(self, node_name: str) -> Path:
        return self.root / "workers" / f"{subjects.check_token(node_name, 'node name')}.seed"

    def ensure_service(self) -> Path:
        load_or_create_seed(self.service_seed)
        return self.service_seed

    def grant_worker(self, grant: WorkerGrant) -> Path:
        """Record ``grant`` (replacing an older one of the same node name) and return
        its worker's seed file, made when missing."""
        for token, what in ((grant.zone, "zone"), (grant.model, "model"),
                            (grant.node_id, "node id")):
            subjects.check_token(token, what)
        seed = self.worker_seed(grant.node_name)
        load_or_create_seed(seed)
        record = {k: v for k, v in asdict(grant).items() if k != "nats_user"}
        seed.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
        return seed

    def remove_worker(self, node_name: str) -> None:
        """Forget a node's grant and its NATS user (``write_config`` drops it)."""
        seed = self.worker_seed(node_name)
        seed.with_suffix(".json").unlink(missing_ok=True)
        seed.unlink(missing_ok=True)

    def grants(self) -> list[WorkerGrant]:
        """Every recorded grant, each with its NATS user (when its seed is there)."""
        folder = self.root / "workers"
        found = sorted(folder.glob("*.json")) if folder.exists() else []
        grants = []
        for path in found:
            grant = WorkerGrant(**{k: v for k, v in json.loads(path.read_text()).items()
                                   if k != "nats_user"})
            seed = path.with_suffix(".seed")
            grants.append(replace(grant, nats_user=public_key(seed)) if seed.exists() else grant)
        return grants

    def users(self, layout: Layout | None = None) -> list[NatsUser]:
        """The service user and every granted worker's, with their permissions
        (on the streams of ``layout``, default one region)."""
        users = [NatsUser("service: full access", load_or_create_seed(self.service_seed))]
        for grant in self.grants():
            if grant.suspended:
                continue  # a suspended node cannot even connect
            nkey = public_key(self.worker_seed(grant.node_name))
            users.append(NatsUser(
                f"worker {grant.node_name}: zone {grant.zone}, model {grant.model}, "
                f"node {grant.node_id[:16]}", nkey,
                worker_permissions(nkey, grant.node_id, grant.model, grant.queues(), layout)))
        return users

    def write_config(self, layout: Layout | None = None) -> Path:
        """Rewrite ``auth.conf`` from the seeds and grants; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(render_authorization(self.users(layout)))
        tmp.replace(self.config)  # a reloading server never reads half a file
        return self.config
