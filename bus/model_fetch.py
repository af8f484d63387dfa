"""Moving model chunks: what a node asks the gate, the plan it gets, the pull.

A node never reads a model store by itself. It asks the gate
(``node.<id>.model``, :class:`ModelAsk`): first for a name's manifest, then
for the chunks it lacks. For a model its grant lists, the gate makes the
node's one fetch consumer (``subjects.fetch_consumer``) on the store of a
region holding them, filtered to exactly those chunks' subjects, and answers
a :class:`FetchPlan`. The node's NATS user may only pull from that consumer
(``bus.auth``), so the grant decides what it can read. Services (replication,
the gate's tokenizers, the verifier) make such a consumer for themselves
(:func:`plan`).

:func:`pull` reads a plan's messages in batches with no acks, by raw pull
requests (``bus.pull``; the fastest read the store offers: a few hundred MB/s
on loopback, where nats-py's object store ``get`` managed 1-23 MB/s), and
hands each chunk whole to its caller, who checks its hash
(``bus.model_cache``).
"""
from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Literal

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from pydantic import Field

from bus import subjects
from bus.bounds import Name, Text
from bus.contracts import Contract
from bus.model_manifest import Manifest, Sha256
from bus.model_store import ModelStore, NotPublished
from bus.pull import Pull

BATCH = 64  # messages a pull asks for at once
MAX_ASK = 1024  # chunks one plan covers (4 GiB): a bigger model is fetched in rounds
CONSUMER_IDLE_S = 120.0  # a fetch consumer nobody reads vanishes by itself


class PlannedChunk(Contract):
    sha256: Sha256
    size: int = Field(ge=0)
    nuid: Name  # its object's subject token: ``$O.<bucket>.C.<nuid>``
    parts: int = Field(ge=0)


class FetchPlan(Contract):
    """Where to pull a set of chunks from: a consumer filtered to exactly them."""

    region: Name
    stream: Name
    consumer: Name
    chunks: tuple[PlannedChunk, ...] = Field(max_length=MAX_ASK)


class ModelAsk(Contract):
    """A node's request to the gate: ``manifest`` of a name, or ``fetch`` chunks of
    the root it names (the gate checks they belong to it)."""

    op: Literal["manifest", "fetch"]
    name: Name
    root: Sha256 | None = None
    chunks: tuple[Sha256, ...] = Field(default=(), max_length=MAX_ASK)
    avoid: tuple[Name, ...] = Field(default=(), max_length=64)  # regions that served bad bytes


class ModelAnswer(Contract):
    ok: bool
    reason: Text = ""
    root: Sha256 | None = None
    manifest: Manifest | None = None
    plan: FetchPlan | None = None


async def plan(store: ModelStore, region: str, shas, consumer: str | None = None) -> FetchPlan:
    """A consumer on ``region``'s store delivering exactly the chunks ``shas``;
    ``consumer``: its name (a node's, remade from scratch), else a fresh one."""
    js, shas = store.js, list(dict.fromkeys(shas))
    held = await store.held(region, shas)
    if missing := [s for s in shas if s not in held]:
        raise NotPublished(f"{len(missing)} chunks missing in {region}, e.g. {missing[0][:16]}…")
    bucket = store.layout.model_store(region)
    stream = subjects.object_stream(bucket)
    name = consumer or f"fetch_{js._nc._nuid.next().decode()}"
    if consumer:
        try:
            await js.delete_consumer(stream, consumer)
        except NotFoundError:
            pass
    chunks = tuple(PlannedChunk(sha256=s, size=held[s].size, nuid=held[s].nuid,
                                parts=held[s].chunks) for s in shas)
    filters = [subjects.object_chunks(bucket, c.nuid) for c in chunks if c.parts]
    if filters:
        await js.add_consumer(stream, api.ConsumerConfig(
            name=name, ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL,
            filter_subjects=filters, inactive_threshold=CONSUMER_IDLE_S, mem_storage=True,
            num_replicas=1))
    return FetchPlan(region=region, stream=stream, consumer=name, chunks=chunks)


async def pull(js: JetStreamContext, fetch_plan: FetchPlan,
               deliver: Callable[[str, bytes], Awaitable[None]], stall_s: float = 10.0) -> None:
    """Read every chunk of ``fetch_plan`` and ``deliver(sha256, bytes)`` each, whole;
    returns early when the store stops sending for ``stall_s`` or has nothing more
    (the caller sees which chunks never came and asks again). The next batch is
    asked for before the last one is handed over (``bus.pull``), so the store
    keeps sending while chunks are checked and written."""
    by_nuid = {c.nuid: c for c in fetch_plan.chunks}
    for c in fetch_plan.chunks:
        if c.parts == 0:
            await deliver(c.sha256, b"")
    left = sum(c.parts for c in fetch_plan.chunks)
    if left == 0:
        return
    reader = await Pull(js._nc, fetch_plan.stream, fetch_plan.consumer).start()
    parts: dict[str, list[bytes]] = {}
    try:
        await reader.request(min(left, BATCH))
        while left > 0:
            if not await reader.wait(stall_s) or not reader.messages:
                return
            msgs = reader.messages
            left -= len(msgs)
            if left > 0:
                await reader.request(min(left, BATCH))
            for msg in msgs:
                chunk = by_nuid.get(msg.subject.rsplit(".", 1)[-1])
                if chunk is None:
                    continue
                got = parts.setdefault(chunk.nuid, [])
                got.append(msg.data)
                if len(got) == chunk.parts:
                    await deliver(chunk.sha256, b"".join(parts.pop(chunk.nuid)))
    finally:
        await reader.close()


async def replicate(store: ModelStore, name: str, root: str, region: str,
                    progress: Callable[[int], None] | None = None) -> int:
    """Copy ``root`` of ``name`` into ``region``'s store from a region holding it
    (each chunk checked on the way), then record the region; bytes copied."""
    entry, _ = await store.entry(name)
    version = entry.version(root) if entry else None
    if version is None:
        raise NotPublished(f"{name} has no version {root[:16]}…")
    if region in version.regions:
        return 0
    manifest = await store.manifest(root, version.regions)
    need = manifest.chunk_set()
    held = await store.held(region, need)
    missing = [s for s in need if s not in held]
    copied = 0

    async def put(sha: str, data: bytes) -> None:
        nonlocal copied
        if hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"chunk {sha} from {source} failed its hash: not copied")
        await store.put_chunk(region, sha, data)
        copied += len(data)
        if progress:
            progress(len(data))
    for source in version.regions:
        await _pull_from(store, source, missing, put)
        missing = [s for s in need if s not in await store.held(region, need)]
        if not missing:
            break
    if missing:
        raise NotPublished(f"{len(missing)} chunks of {name} could not be copied to {region}")
    await store.put_manifest(region, manifest)
    await store.add_region(name, root, region)
    return copied


async def _pull_from(store: ModelStore, region: str, shas: list[str],
                     deliver: Callable[[str, bytes], Awaitable[None]]) -> None:
    """Pull ``shas`` from ``region``'s store through consumers of our own, in rounds."""
    for at in range(0, len(shas), MAX_ASK):
        fetch_plan = await plan(store, region, shas[at:at + MAX_ASK])
        try:
            await pull(store.js, fetch_plan, deliver)
        finally:
            await _drop(store.js, fetch_plan)


async def _drop(js: JetStreamContext, fetch_plan: FetchPlan) -> None:
    try:
        await js.delete_consumer(fetch_plan.stream, fetch_plan.consumer)
    except Exception:  # noqa: BLE001 - an idle consumer goes by itself
        pass


def service_fetch(store: ModelStore):
    """A ``bus.model_cache.Fetch`` for services: each round reads what is missing
    from the regions holding it, the layout's first first, the next region first on
    a retry."""
    regions = store.layout.regions
    async def fetch(missing: dict[str, int], deliver, attempt: int) -> None:
        order = regions[attempt % len(regions):] + regions[:attempt % len(regions)]
        wanted = dict(missing)
        for region in order:
            have = list(await store.held(region, wanted))
            await _pull_from(store, region, have, deliver)
            wanted = {s: n for s, n in wanted.items() if s not in have}
            if not wanted:
                return
    return fetch
