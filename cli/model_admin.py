"""``inferbus models``: publish, list, replicate and retire the network's models.

``push`` hashes a model directory into its manifest, stores each chunk the
uploader's region does not hold yet (so a rerun resumes, and a new version
stores only what changed), stores the manifest, makes the root the name's
serving version (the previous one drains) and copies it to the other regions
asked for. It prints the root and what the push stored against the model's
size: the dedup ratio.
"""
from __future__ import annotations

import asyncio
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bus.config import Settings
from bus.model_fetch import replicate
from bus.model_manifest import Manifest, build_manifest, read_span
from bus.model_store import COLLECT_GRACE_S, CatalogEntry, ModelStore
from bus.subjects import check_token
from cli.admin import connect_admin

PUT_CONCURRENCY = 4


@dataclass(frozen=True)
class Pushed:
    name: str
    root: str
    size: int
    chunks: int
    stored_chunks: int
    stored_bytes: int
    regions: tuple[str, ...]

    def render(self) -> str:
        share = self.stored_bytes / self.size if self.size else 0.0
        return (f"model {self.name}: root {self.root}\n"
                f"  {self.size / 2**20:.1f} MiB in {self.chunks} chunks; stored "
                f"{self.stored_chunks} new chunks, {self.stored_bytes / 2**20:.1f} MiB "
                f"({share:.1%} of the model; dedup ratio {1 - share:.1%})\n"
                f"  regions: {', '.join(self.regions)}")


def _asked(settings: Settings, text: str | None) -> tuple[str, ...]:
    """The regions a comma-separated ``text`` names; an unknown one is one line."""
    layout = settings.layout()
    asked = tuple(dict.fromkeys(r.strip() for r in (text or "").split(",") if r.strip()))
    for r in asked:
        layout.zones(r)  # raises RegionError naming the known ones
    return asked


def _progress(total: int, desc: str):
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not sys.stderr.isatty())


async def push(settings: Settings, directory: Path, name: str, regions: str | None) -> Pushed:
    check_token(name, "model name")
    directory = Path(directory).expanduser()
    wanted = tuple(dict.fromkeys([settings.this_region(), *_asked(settings, regions)]))
    manifest = await asyncio.to_thread(build_manifest, directory)
    nc, js = await connect_admin(settings)
    try:
        store = ModelStore(js, settings.layout(), settings.stream_replicas)
        first = wanted[0]
        need = manifest.chunk_set()
        held = await store.held(first, need)
        todo = {s: n for s, n in need.items() if s not in held}
        with _progress(sum(todo.values()), f"push {name}") as bar:
            await _put_chunks(store, first, directory, manifest, todo, bar.update)
        await store.put_manifest(first, manifest)
        root = manifest.root()
        entry, _ = await store.entry(name)
        current = entry.current() if entry else None
        if current is None or current.root != root:  # a push of the serving root is a no-op
            await store.publish(name, manifest, (first,))
        # A chunk found stored at the start may have been collected before the version
        # named it (a collection spares only recent objects): store any such again.
        held = await store.held(first, need)
        if gone := {s: n for s, n in need.items() if s not in held}:
            await _put_chunks(store, first, directory, manifest, gone, lambda n: None)
        for region in wanted[1:]:
            with _progress(sum(need.values()), f"replicate {name} to {region}") as bar:
                await replicate(store, name, root, region, bar.update)
        regions_held = (await store.entry(name))[0].version(root).regions
        return Pushed(name, root, manifest.size, len(need), len(todo), sum(todo.values()),
                      regions_held)
    finally:
        await nc.close()


async def _put_chunks(store: ModelStore, region: str, directory: Path, manifest: Manifest,
                      todo: dict[str, int], advance) -> None:
    """Store the chunks ``todo`` of ``directory``, a few at a time, each read when sent
    and checked against the manifest (a file that changed since it was hashed fails)."""
    gate = asyncio.Semaphore(PUT_CONCURRENCY)
    places = {}
    for f in manifest.files:
        for offset, chunk in f.offsets():
            if chunk.sha256 in todo:
                places.setdefault(chunk.sha256, (directory / f.path, offset, chunk.size))

    async def one(sha: str, path: Path, offset: int, length: int) -> None:
        async with gate:
            data = await asyncio.to_thread(read_span, path, offset, length)
            if hashlib.sha256(data).hexdigest() != sha:
                raise RuntimeError(f"{path} changed while it was pushed: push again")
            await store.put_chunk(region, sha, data)
            advance(len(data))
    await asyncio.gather(*(one(sha, *place) for sha, place in places.items()))


async def listing(settings: Settings) -> list[CatalogEntry]:
    nc, js = await connect_admin(settings)
    try:
        return await ModelStore(js, settings.layout(), settings.stream_replicas).entries()
    finally:
        await nc.close()


def table(entries: list[CatalogEntry]) -> str:
    rows = [f"{'MODEL':28} {'ROOT':18} {'SIZE':>10} {'STATE':9} REGIONS"]
    for entry in entries:
        for v in reversed(entry.versions):
            rows.append(f"{entry.name:28} {v.root[:16]}… {v.size / 2**20:8.1f}MiB {v.state:9} "
                        f"{','.join(v.regions)}")
    return "\n".join(rows) if entries else "no models published: `inferbus models push DIR --name NAME`"


async def replicate_to(settings: Settings, name: str, regions: str, root: str | None) -> str:
    wanted = _asked(settings, regions)
    nc, js = await connect_admin(settings)
    try:
        store = ModelStore(js, settings.layout(), settings.stream_replicas)
        entry, _ = await store.entry(name)
        version = (entry.version(root) if root else entry.current()) if entry else None
        if version is None:
            raise ValueError(f"no published model {name!r}" + (f" with root {root}" if root else ""))
        for region in wanted:
            with _progress(version.size, f"replicate {name} to {region}") as bar:
                copied = await replicate(store, name, version.root, region, bar.update)
            print(f"{name} in {region}: {copied / 2**20:.1f} MiB copied")
        held = (await store.entry(name))[0].version(version.root).regions
        return f"model {name} ({version.root[:16]}…) is held in: {', '.join(held)}"
    finally:
        await nc.close()


async def remove(settings: Settings, name: str, root: str | None,
                 grace_s: float = COLLECT_GRACE_S) -> str:
    nc, js = await connect_admin(settings)
    try:
        store = ModelStore(js, settings.layout(), settings.stream_replicas)
        retired = await store.retire(name, root, "removed")
        dropped = await store.collect(grace_s)
        roots = ", ".join(r[:16] + "…" for r in retired) or "nothing live"
        return (f"model {name}: retired {roots}; chunks no live model uses and stored over "
                f"{grace_s:.0f} s ago were collected "
                f"({', '.join(f'{r}: {n}' for r, n in dropped.items())})")
    finally:
        await nc.close()

