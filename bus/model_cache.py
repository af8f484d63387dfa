"""A machine's own copies of models, by root: ``<models dir>/roots/<root>/``.

:meth:`LocalModels.materialize` turns a manifest into a directory a worker
loads, fetching only what it lacks:

- every chunk is checked against its SHA-256 before a byte of it is written;
  a chunk whose bytes do not match is refused, named in the log, and fetched
  again (from another region when the caller can), and after ``TRIES``
  refusals the fetch fails naming it;
- chunks this machine already holds, in another version or another model,
  are copied from there (after checking their hash) instead of fetched;
- it works in ``.partial-<root>`` with a journal of the chunks written, so an
  interrupted fetch resumes where it stopped (journaled chunks are re-checked
  first), and renames the directory into place only when it is whole, with
  its manifest beside it: a directory under ``roots/`` is always complete.

Several processes sharing a models dir (``inferbus up``'s workers) take a
file lock per root, so one fetches and the others find it done.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from bus.model_manifest import Manifest, read_span

log = logging.getLogger("inferbus.models")
ROOTS = "roots"
MANIFEST = ".manifest.json"
JOURNAL = ".journal"
TRIES = 3

# fetch(missing {sha: size}, deliver(sha, bytes), attempt) -> None; attempt counts from 0
Fetch = Callable[[dict[str, int], Callable[[str, bytes], Awaitable[None]], int], Awaitable[None]]


class ChunkRefused(RuntimeError):
    """Chunks that failed their hash ``TRIES`` times, or never came."""


class LocalModels:
    def __init__(self, models_dir: Path) -> None:
        self.dir = Path(models_dir) / ROOTS

    def path(self, root: str) -> Path:
        return self.dir / root

    def complete(self, root: str) -> bool:
        return (self.path(root) / MANIFEST).is_file()

    def roots(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if self.complete(p.name)) \
            if self.dir.is_dir() else []

    def _held(self, skip: str) -> dict[str, tuple[Path, int, int]]:
        """Where each chunk of the complete copies here lies: sha -> (file, offset, size)."""
        found: dict[str, tuple[Path, int, int]] = {}
        for root in self.roots():
            if root == skip:
                continue
            try:
                other = Manifest.model_validate_json((self.path(root) / MANIFEST).read_bytes())
            except (OSError, ValueError):
                continue
            for f in other.files:
                for offset, chunk in f.offsets():
                    found.setdefault(chunk.sha256, (self.path(root) / f.path, offset, chunk.size))
        return found

    async def materialize(self, manifest: Manifest, fetch: Fetch,
                          progress: Callable[[int], None] | None = None) -> Path:
        """The complete directory of ``manifest``, made from held and fetched chunks."""
        root = manifest.root()
        if self.complete(root):
            return self.path(root)
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = await asyncio.to_thread(_locked, self.dir / f".lock-{root}")
        try:
            if not self.complete(root):
                await self._assemble(manifest, root, fetch, progress or (lambda n: None))
        finally:
            lock.close()
        return self.path(root)

    async def _assemble(self, manifest: Manifest, root: str, fetch: Fetch,
                        progress: Callable[[int], None]) -> None:
        work = self.dir / f".partial-{root}"
        work.mkdir(exist_ok=True)
        places: dict[str, list[tuple[Path, int]]] = {}
        for f in manifest.files:
            path = work / f.path
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as fh:
                fh.truncate(f.size)
            for offset, chunk in f.offsets():
                places.setdefault(chunk.sha256, []).append((path, offset))
        sizes = manifest.chunk_set()
        journal = work / JOURNAL
        done = await asyncio.to_thread(_still_good, journal, places, sizes)
        if done:
            log.info("resuming %s…: %d of %d chunks already here", root[:16], len(done),
                     len(sizes))
        progress(sum(sizes[s] for s in done))
        jfh = open(journal, "a")

        def write(sha: str, data: bytes) -> None:
            for path, offset in places[sha]:
                with open(path, "r+b") as fh:
                    fh.seek(offset)
                    fh.write(data)
            jfh.write(sha + "\n")
            jfh.flush()
            done.add(sha)
            progress(len(data))

        held = self._held(root)
        for sha in [s for s in sizes if s not in done and s in held]:
            path, offset, size = held[sha]
            data = await asyncio.to_thread(read_span, path, offset, size)
            if hashlib.sha256(data).hexdigest() == sha:
                write(sha, data)
        reused = sum(1 for s in sizes if s in held)
        if reused:
            log.info("%d of %d chunks of %s… reused from copies held here", reused, len(sizes),
                     root[:16])
        refused: dict[str, int] = {}

        async def deliver(sha: str, data: bytes) -> None:
            if sha not in places or sha in done:
                return
            got = await asyncio.to_thread(_sha256, data)  # off the loop: reads go on meanwhile
            if got != sha:
                refused[sha] = refused.get(sha, 0) + 1
                log.warning("refused chunk %s (%s): its %d bytes hash to %s; fetching it again",
                            sha, _where(places[sha][0], work), len(data), got)
                return
            await asyncio.to_thread(write, sha, data)

        try:
            for attempt in range(TRIES):
                missing = {s: n for s, n in sizes.items() if s not in done}
                if not missing:
                    break
                await fetch(missing, deliver, attempt)
        finally:
            jfh.close()
        if missing := [s for s in sizes if s not in done]:
            bad = [s for s in missing if refused.get(s)]
            what = (f"chunk {bad[0]} ({_where(places[bad[0]][0], work)}) failed its hash "
                    f"{refused[bad[0]]} times" if bad else f"{len(missing)} chunks never came")
            raise ChunkRefused(f"model {root[:16]}… not fetched: {what}")
        (work / MANIFEST).write_text(manifest.model_dump_json())
        journal.unlink()
        for f in work.rglob("*"):
            if f.is_file():
                f.chmod(0o644)
        os.rename(work, self.path(root))

    def remove(self, root: str) -> None:
        shutil.rmtree(self.path(root), ignore_errors=True)


def _locked(path: Path):
    fh = open(path, "a")
    fcntl.flock(fh, fcntl.LOCK_EX)
    return fh


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _still_good(journal: Path, places: dict[str, list[tuple[Path, int]]],
                sizes: dict[str, int]) -> set[str]:
    """The journaled chunks whose bytes on disk still match their hash."""
    if not journal.exists():
        return set()
    good = set()
    for sha in journal.read_text().split():
        if sha in places and sha not in good:
            path, offset = places[sha][0]
            if hashlib.sha256(read_span(path, offset, sizes[sha])).hexdigest() == sha:
                good.add(sha)
    return good


def _where(place: tuple[Path, int], work: Path) -> str:
    path, offset = place
    return f"{path.relative_to(work)} at byte {offset}"
