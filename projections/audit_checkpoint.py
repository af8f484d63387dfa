"""Audit checkpoints: a signed summary of an audit that passed, at a log
position, so that the next audit replays only the events after it.

A checkpoint lives in the auditor's directory (``<data dir>/audit``, beside
the key that signs it; an operator's own files, not a bucket on the bus that
every service with NATS credentials could rewrite or delete):

- ``auditor.key``: the auditor's ed25519 key (0600), made on the first write;
- ``checkpoint.json``: the manifest, signed with that key: the ``EVENTS``
  stream's creation time, two marks (a sequence and the digest of the event
  stored there): ``checked``, how far the invariant checker's state reaches,
  and ``rebuilt``, how far the rebuilt read model reaches (the live store's
  position then, at most ``checked``), the SHA-256 of the two files below, and
  the shapes they were written with (:func:`projections.audit_resume.fingerprint`);
- ``state-<digest>.json.z``: the checker's state (:mod:`projections.audit_resume`);
- ``rebuild-<digest>.sqlite3``: the read models rebuilt from events
  1..``rebuilt``.

The data files are written first under names of their own and the manifest
replaced last (a rename), so a crash leaves the old checkpoint or the new
one. :meth:`Checkpoints.load` refuses (:class:`CheckpointRefused`, one line) a
manifest whose signature is not the local key's, a file whose digest differs
from the signed one, and a log that no longer holds the audited events at the
marks (the stream replaced or purged, another event at a marked sequence).
A checkpoint of other shapes is not refused but set aside: the audit replays
from the first event and says so.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus import subjects
from bus.signing import load_or_create_key
from projections.audit_resume import fingerprint

FORMAT = "inferbus-audit-checkpoint-1"
KEY_FILE, MANIFEST, LOCK = "auditor.key", "checkpoint.json", ".lock"
_CHUNK = 1 << 20


class CheckpointRefused(RuntimeError):
    """A checkpoint that cannot be trusted; the message is one line."""

    def __str__(self) -> str:
        return f"checkpoint refused: {self.args[0]}"


@dataclass(frozen=True)
class Mark:
    """A log position and the digest of the event stored there ('' at 0)."""

    seq: int
    digest: str


def event_digest(subject: str, data: bytes) -> str:
    return hashlib.sha256(subject.encode() + b"\n" + data).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: the marks and the files to resume from."""

    stream_created: str  # the EVENTS stream it audited, by its creation time
    checked: Mark
    rebuilt: Mark
    state: bytes
    rebuild_file: Path  # a copy of its rebuild, checked against the signed digest
    written_at: str


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _signed_bytes(body: dict[str, Any]) -> bytes:
    return FORMAT.encode() + b"\n" + json.dumps(body, sort_keys=True,
                                                separators=(",", ":")).encode()


class Checkpoints:
    """The checkpoint of one auditor, kept in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.manifest = self.directory / MANIFEST

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two audits at once: one reads while the other writes, or both write and
        # one would delete the other's files as stale.
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / LOCK).open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def load(self, rebuild_to: Path) -> tuple[Checkpoint | None, str | None]:
        """The checkpoint whose signature and files check out, its rebuild copied
        to ``rebuild_to`` (the copy is what is checked and used), else (None, why
        not) when there is none or it has other shapes. Raises
        :class:`CheckpointRefused` for one that fails a check. Call
        :meth:`verify_log` before trusting its marks."""
        if not self.manifest.exists():
            return None, "no checkpoint yet"
        with self._locked():
            return self._load(rebuild_to)

    def _load(self, rebuild_to: Path) -> tuple[Checkpoint | None, str | None]:
        key_path = self.directory / KEY_FILE
        try:
            manifest = json.loads(self.manifest.read_bytes())
            body, signature = manifest["body"], bytes.fromhex(manifest["signature"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointRefused(f"{self.manifest} is unreadable ({exc})") from None
        if not key_path.exists():
            raise CheckpointRefused(f"the auditor key {key_path} that signed "
                                    f"{self.manifest} is missing")
        key = load_or_create_key(key_path)
        try:
            key.verify_key.verify(_signed_bytes(body), signature)
        except (BadSignatureError, ValueError):
            raise CheckpointRefused(f"bad signature on {self.manifest} (not by this "
                                    f"auditor's key {key_path})") from None
        if body.get("format") != FORMAT or body.get("shapes") != fingerprint():
            return None, "the checkpoint was written by another version of the audit"
        state = self._part(body, "state")
        shutil.copyfile(self._part(body, "rebuild"), rebuild_to)
        if _file_digest(rebuild_to) != body["rebuild"]["sha256"]:
            raise CheckpointRefused(f"its rebuild file {body['rebuild']['file']} differs from "
                                    "the one it signed")
        data = state.read_bytes()
        if hashlib.sha256(data).hexdigest() != body["state"]["sha256"]:
            raise CheckpointRefused(f"its state file {state} differs from the one it signed")
        return Checkpoint(stream_created=body["stream_created"],
                          checked=Mark(**body["checked"]), rebuilt=Mark(**body["rebuilt"]),
                          state=data, rebuild_file=rebuild_to,
                          written_at=body["written_at"]), None

    def _part(self, body: dict[str, Any], part: str) -> Path:
        name = body[part]["file"]
        path = self.directory / name
        if Path(name).name != name or not path.exists():
            raise CheckpointRefused(f"its {part} file {path} is missing")
        return path

    @staticmethod
    async def verify_log(js: JetStreamContext, checkpoint: Checkpoint, created: str) -> None:
        """Raise :class:`CheckpointRefused` unless the log still holds, at the
        checkpoint's marks, the events it audited. ``created``: the ``EVENTS``
        stream's creation time now (the manifest names the one it audited)."""
        if created != checkpoint.stream_created:
            raise CheckpointRefused(f"the {subjects.EVENTS_STREAM} stream was created at "
                                    f"{created}, not at {checkpoint.stream_created} as when "
                                    f"it was audited up to sequence {checkpoint.checked.seq} "
                                    "(replaced?)")
        for mark in {checkpoint.checked, checkpoint.rebuilt}:
            if not mark.seq:
                continue
            try:
                msg = await js.get_msg(subjects.EVENTS_STREAM, mark.seq)
            except NotFoundError:
                found = "none"
            else:
                found = event_digest(msg.subject, msg.data or b"")
            if found != mark.digest:
                raise CheckpointRefused(
                    f"the log holds no event at sequence {mark.seq} any more (purged?)"
                    if found == "none" else f"the log holds another event at sequence "
                    f"{mark.seq} than the one audited (rewritten?)")

    def write(self, *, created: str, checked: Mark, rebuilt: Mark, state: bytes,
              rebuild_file: Path) -> None:
        """Sign and store a checkpoint (from an audit that passed), replacing the
        last one. ``rebuild_file``: the closed scratch read model at ``rebuilt``."""
        with self._locked():
            key = load_or_create_key(self.directory / KEY_FILE)
            state_digest = hashlib.sha256(state).hexdigest()
            rebuild_digest = _file_digest(rebuild_file)
            names = {"state": f"state-{state_digest[:16]}.json.z",
                     "rebuild": f"rebuild-{rebuild_digest[:16]}.sqlite3"}
            _write_new(self.directory / names["state"], state)
            tmp = self.directory / (names["rebuild"] + ".tmp")
            shutil.copyfile(rebuild_file, tmp)
            _sync(tmp)
            os.replace(tmp, self.directory / names["rebuild"])
            body = {"format": FORMAT, "shapes": fingerprint(), "stream": subjects.EVENTS_STREAM,
                    "stream_created": created, "checked": checked.__dict__,
                    "rebuilt": rebuilt.__dict__,
                    "state": {"file": names["state"], "sha256": state_digest},
                    "rebuild": {"file": names["rebuild"], "sha256": rebuild_digest},
                    "written_at": datetime.now(timezone.utc).isoformat(),
                    "auditor": key.verify_key.encode().hex()}
            manifest = {"body": body, "signature": _sign(key, body)}
            _write_new(self.manifest, json.dumps(manifest, indent=1).encode())
            for stale in self.directory.iterdir():  # the last checkpoint's files
                if stale.name.startswith(("state-", "rebuild-")) and \
                        stale.name not in names.values():
                    stale.unlink(missing_ok=True)


def _sign(key: SigningKey, body: dict[str, Any]) -> str:
    return key.sign(_signed_bytes(body)).signature.hex()


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a rename over the old one)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
