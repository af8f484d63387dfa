"""The network's model store: chunks by content address, manifests by root, and
the catalog that says which root a name means.

- Each region keeps its copies in an object store of its own
  (``Layout.model_store``: ``model_chunks`` with one region,
  ``model_chunks_<r>`` with several), placed in its cluster with the region's
  replica count. A chunk is the object ``c.<sha256>`` (stored once, whatever
  models and versions share it), a manifest the object ``m.<root>``.
- The catalog is the KV bucket ``models`` (home region): per name, its
  versions (root, size, regions holding it, state). ``serving`` is what new
  nodes fetch; ``draining`` is the version a rollout replaced, still routed
  while nodes serve it; ``retired`` is routed nowhere. ``ModelPublished`` and
  ``ModelRetired`` on the log are its audit trail.

This is the service side (full credentials): ``inferbus models`` and the gate
use it. Nodes read chunks only through the fetch consumer the gate makes for
them (``gate.model_access``).
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Literal

from nats.errors import Error as NatsError
from nats.js import JetStreamContext, api
from nats.js.errors import (BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError,
                            NoKeysError, NotFoundError)
from nats.js.object_store import ObjectStore
from pydantic import Field

from bus import subjects
from bus.bounds import Name
from bus.contracts import Contract
from bus.model_events import ModelPublished, ModelRetired
from bus.model_manifest import Manifest, Sha256
from bus.publish import publish_event
from bus.regions import Layout
from bus.stream_configs import object_store_config
from bus.streams import models_bucket, patiently

PART_SIZE = 512 << 10  # one stored message of a chunk: well under NATS's 1 MiB payload
PUT_CONCURRENCY = 4
COLLECT_GRACE_S = 3600.0  # a chunk stored this recently may belong to a push in progress
State = Literal["serving", "draining", "retired"]


class ModelVersion(Contract):
    root: Sha256
    size: int = Field(ge=0, le=1 << 50)
    state: State = "serving"
    regions: tuple[Name, ...] = Field(max_length=64)
    published_at: datetime
    model_type: str | None = Field(default=None, max_length=64)
    context_length: int = Field(default=0, ge=0, le=1 << 24)


class CatalogEntry(Contract):
    """Every version ever published under ``name``, oldest first."""

    name: Name
    versions: tuple[ModelVersion, ...] = Field(default=(), max_length=256)

    def current(self) -> ModelVersion | None:
        """The version new nodes fetch: the newest serving one."""
        return next((v for v in reversed(self.versions) if v.state == "serving"), None)

    def accepted(self) -> frozenset[str]:
        """Roots the network routes this name to: serving and draining."""
        return frozenset(v.root for v in self.versions if v.state != "retired")

    def version(self, root: str) -> ModelVersion | None:
        return next((v for v in self.versions if v.root == root), None)

    def changed(self, root: str, **update) -> "CatalogEntry":
        return self.model_copy(update={"versions": tuple(
            v.model_copy(update=update) if v.root == root else v for v in self.versions)})


class NotPublished(LookupError):
    """A name, root or chunk the store does not hold."""


class ModelStore:
    """Model chunks, manifests and the catalog, over a service connection."""

    def __init__(self, js: JetStreamContext, layout: Layout, replicas: int = 1) -> None:
        self.js, self.layout, self.replicas = js, layout, replicas
        self._stores: dict[str, ObjectStore] = {}

    # -- the regions' object stores

    async def store(self, region: str) -> ObjectStore:
        """``region``'s object store, made (placed in its cluster) if missing."""
        if region not in self._stores:
            bucket = self.layout.model_store(region)
            config = object_store_config(bucket, self.replicas, self.layout.placement(region))

            async def step() -> None:
                try:
                    await self.js.stream_info(config.name)
                except NotFoundError:
                    try:
                        await self.js.add_stream(config)
                    except BadRequestError as exc:
                        if exc.err_code != 10058:  # made meanwhile by another process
                            raise
            await patiently(step, f"model store {bucket}")
            self._stores[region] = ObjectStore(bucket, config.name, self.js)
        return self._stores[region]

    async def held(self, region: str, shas) -> dict[str, api.ObjectInfo]:
        """The chunks among ``shas`` that ``region``'s store holds, with their object info."""
        store = await self.store(region)
        gate = asyncio.Semaphore(32)

        async def one(sha: str):
            async with gate:
                try:
                    return sha, await store.get_info(subjects.chunk_object(sha))
                except NotFoundError:
                    return sha, None
        found = await asyncio.gather(*(one(s) for s in shas))
        return {sha: info for sha, info in found if info is not None}

    async def put_chunk(self, region: str, sha: str, data: bytes) -> None:
        store = await self.store(region)
        meta = api.ObjectMeta(name=subjects.chunk_object(sha),
                              options=api.ObjectMetaOptions(max_chunk_size=PART_SIZE))
        await store.put(meta.name, data, meta=meta)

    async def put_manifest(self, region: str, manifest: Manifest) -> None:
        store = await self.store(region)
        await store.put(subjects.manifest_object(manifest.root()),
                        manifest.model_dump_json().encode())

    async def manifest(self, root: str, regions=None) -> Manifest:
        """The manifest of ``root`` from the first of ``regions`` that holds it, checked:
        a manifest whose own root is not ``root`` is refused, whoever stored it."""
        for region in regions or self.layout.regions:
            try:
                found = await (await self.store(region)).get(subjects.manifest_object(root))
            except NotFoundError:
                continue
            manifest = Manifest.model_validate_json(found.data or b"")
            if manifest.root() != root:
                raise ValueError(f"the manifest stored as {root[:16]}… in {region} has root "
                                 f"{manifest.root()[:16]}…: refused")
            return manifest
        raise NotPublished(f"no manifest {root[:16]}… in {', '.join(regions or self.layout.regions)}")

    # -- the catalog

    async def catalog(self):
        return await models_bucket(self.js, self.replicas, self.layout.placement(self.layout.home))

    async def entry(self, name: str) -> tuple[CatalogEntry | None, int | None]:
        """(entry, its revision), or (None, None) for a name never published."""
        kv = await self.catalog()
        try:
            found = await kv.get(subjects.check_token(name, "model"))
        except KeyNotFoundError:
            return None, None
        return CatalogEntry.model_validate_json(found.value or b"{}"), found.revision

    async def entries(self) -> list[CatalogEntry]:
        kv = await self.catalog()
        try:
            keys = await kv.keys()
        except NoKeysError:  # an empty catalog
            return []
        entries = [(await self.entry(k))[0] for k in sorted(keys)]
        return [e for e in entries if e is not None]

    async def change(self, name: str, edit: Callable[[CatalogEntry | None], CatalogEntry]
                     ) -> CatalogEntry:
        """Apply ``edit`` to ``name``'s entry by compare-and-set, retried on a race."""
        kv = await self.catalog()
        while True:
            entry, revision = await self.entry(name)
            new = edit(entry)
            try:
                if revision is None:
                    await kv.create(name, new.model_dump_json().encode())
                else:
                    await kv.update(name, new.model_dump_json().encode(), last=revision)
                return new
            except (KeyWrongLastSequenceError, BadRequestError):
                continue  # another admin changed it meanwhile: edit the new value

    async def publish(self, name: str, manifest: Manifest, regions: tuple[str, ...]
                      ) -> CatalogEntry:
        """Make ``manifest`` the serving version of ``name`` (its chunks and manifest
        already stored in ``regions``). The version it replaces drains."""
        root, now = manifest.root(), datetime.now(timezone.utc)

        def edit(entry: CatalogEntry | None) -> CatalogEntry:
            entry = entry or CatalogEntry(name=name)
            old = entry.version(root)
            held = tuple(dict.fromkeys([*(old.regions if old else ()), *regions]))
            kept = tuple(v.model_copy(update={"state": "draining"}) if v.state == "serving" else v
                         for v in entry.versions if v.root != root)
            return entry.model_copy(update={"versions": (*kept, ModelVersion(
                root=root, size=manifest.size, regions=held, published_at=now,
                model_type=manifest.model_type, context_length=manifest.context_length))})
        entry = await self.change(name, edit)
        await publish_event(self.js, ModelPublished(name=name, root=root, size=manifest.size,
                                                    regions=entry.version(root).regions))
        return entry

    async def add_region(self, name: str, root: str, region: str) -> None:
        def edit(entry: CatalogEntry | None) -> CatalogEntry:
            if entry is None or (v := entry.version(root)) is None:
                raise NotPublished(f"{name} has no version {root[:16]}…")
            return entry.changed(root, regions=tuple(dict.fromkeys([*v.regions, region])))
        await self.change(name, edit)

    async def retire(self, name: str, root: str | None, reason: str) -> list[str]:
        """Retire ``root`` of ``name`` (every live version when None); the roots retired."""
        retired: list[str] = []

        def edit(entry: CatalogEntry | None) -> CatalogEntry:
            if entry is None:
                raise NotPublished(f"no model {name!r} is published")
            retired[:] = [v.root for v in entry.versions
                          if v.state != "retired" and root in (None, v.root)]
            if root is not None and entry.version(root) is None:
                raise NotPublished(f"{name} has no version {root[:16]}…")
            for r in retired:
                entry = entry.changed(r, state="retired")
            return entry
        await self.change(name, edit)
        for r in retired:
            await publish_event(self.js, ModelRetired(name=name, root=r, reason=reason))
        return retired

    async def collect(self, grace_s: float = COLLECT_GRACE_S) -> dict[str, int]:
        """Delete, in every region, the chunks and manifests no live version uses;
        how many chunks each region dropped. Objects stored in the last ``grace_s``
        stay (a push in progress has not published what it stores yet), and the
        catalog is read again just before deleting, so a version published meanwhile
        keeps what it shares."""
        live, keep = await self._in_use()
        cutoff = datetime.now(timezone.utc).timestamp() - grace_s
        unused: dict[str, list[str]] = {}
        for region in self.layout.regions:
            unused[region] = [
                info.name for info in await _objects(await self.store(region))
                if _stored_at(info) < cutoff and info.name[2:] not in (
                    live[region] if info.name.startswith("c.") else keep[region])]
        live, keep = await self._in_use()
        dropped = {}
        for region, names in unused.items():
            store, dropped[region] = await self.store(region), 0
            for name in names:
                if name[2:] in (live[region] if name.startswith("c.") else keep[region]):
                    continue
                try:
                    await store.delete(name)
                    dropped[region] += name.startswith("c.")
                except NotFoundError:
                    pass
        return dropped

    async def _in_use(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """Per region: the chunks and the roots of every version not retired."""
        live: dict[str, set[str]] = {r: set() for r in self.layout.regions}
        keep: dict[str, set[str]] = {r: set() for r in self.layout.regions}
        for entry in await self.entries():
            for v in entry.versions:
                if v.state == "retired":
                    continue
                manifest = await self.manifest(v.root, v.regions or None)
                for region in v.regions:
                    live.setdefault(region, set()).update(manifest.chunk_set())
                    keep.setdefault(region, set()).add(v.root)
        return live, keep


async def _objects(store: ObjectStore) -> list[api.ObjectInfo]:
    try:
        return [i for i in await store.list(ignore_deletes=True)
                if (i.name or "").startswith(("c.", "m."))]
    except (NotFoundError, NatsError, json.JSONDecodeError):
        return []


def _stored_at(info: api.ObjectInfo) -> float:
    try:
        return datetime.fromisoformat(info.mtime).timestamp()
    except (TypeError, ValueError):
        return 0.0
