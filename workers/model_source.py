"""Where a worker's weights come from: the network, by root.

``inferbus worker --model NAME`` asks the gate for NAME's manifest, then for
the chunks its machine lacks, and pulls them from its region's store (another
region's when its own has no copy yet, or served it bad bytes), each chunk
checked before it is written (``bus.model_cache``). The directory it loads is
``<models dir>/roots/<root>``, complete or absent. A node needs nothing but
its NATS credentials and a grant listing NAME.

``--model DIR`` serves a directory as it is, named by the directory and
reporting its root; so does a NAME the network never published that the
models dir holds (``inferbus models pull``, the tests' echo models). Whether
such a root gets jobs is the network's call (``bus.model_book``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client
from nats.errors import Error as NatsError
from tqdm import tqdm

from bus import subjects
from bus.config import Settings
from bus.model_cache import LocalModels
from bus.model_fetch import MAX_ASK, ModelAnswer, ModelAsk, pull
from bus.model_manifest import build_manifest

log = logging.getLogger("inferbus.worker")
ASK_TIMEOUT_S = 10.0
GATE_PATIENCE_S = 60.0  # the gate may start after the worker
LOCAL_PATIENCE_S = 5.0  # with a local copy to fall back on
RETRY = ("try again", "no active grant for this node")  # a store or grant on its way


class ModelUnavailable(RuntimeError):
    """The network will not or cannot give this node the model."""


@dataclass(frozen=True)
class Obtained:
    name: str
    path: Path
    root: str


def is_path(model: str) -> bool:
    return model.startswith(".") or os.sep in model or model.startswith("~")


async def obtain(settings: Settings, nc: Client, node_id: str, model: str,
                 progress: bool = False) -> Obtained:
    """The model a worker serves, fetched and verified when it is the network's."""
    if is_path(model):
        path = Path(model).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"no model directory at {path}")
        return Obtained(path.name, path, (await asyncio.to_thread(build_manifest, path)).root())
    local = settings.models_dir / subjects.check_token(model, "model")
    has_local = (local / "config.json").is_file()
    answer = await _ask(nc, node_id, ModelAsk(op="manifest", name=model),
                        LOCAL_PATIENCE_S if has_local else GATE_PATIENCE_S)
    if answer is None or (not answer.ok and answer.reason == f"model {model} is not published"):
        if has_local:  # a local model: the network decides whether its root gets jobs
            log.warning("model %s is not published by the network: serving the local copy "
                        "in %s", model, local)
            return Obtained(model, local, (await asyncio.to_thread(build_manifest, local)).root())
        raise ModelUnavailable(f"model {model}: " + (answer.reason if answer else
                                                     "no gate answered"))
    if not answer.ok or answer.manifest is None or answer.root is None:
        raise ModelUnavailable(f"model {model}: {answer.reason or 'no manifest'}")
    manifest, root = answer.manifest, answer.root
    if manifest.root() != root:
        raise ModelUnavailable(f"model {model}: the manifest given does not hash to {root}")
    cache = LocalModels(settings.models_dir)
    if cache.complete(root):
        return Obtained(model, cache.path(root), root)
    js, served_by = nc.jetstream(), []

    async def fetch(missing: dict[str, int], deliver, attempt: int) -> None:
        avoid = tuple(served_by[-1:]) if attempt else ()  # it sent bytes that failed
        wanted = list(missing)
        for at in range(0, len(wanted), MAX_ASK):
            got = await _ask(nc, node_id, ModelAsk(op="fetch", name=model, root=root,
                                                   chunks=tuple(wanted[at:at + MAX_ASK]),
                                                   avoid=avoid), GATE_PATIENCE_S)
            if got is None or not got.ok or got.plan is None:
                raise ModelUnavailable(f"model {model}: "
                                       + (got.reason if got else "no gate answered"))
            served_by.append(got.plan.region)
            await pull(js, got.plan, deliver)

    started = time.monotonic()
    with tqdm(total=manifest.size, unit="B", unit_scale=True, desc=f"fetch {model}",
              disable=not progress) as bar:
        path = await cache.materialize(manifest, fetch, bar.update)
    log.info("model %s (root %s…) ready in %s after %.1f s from %s", model, root[:16], path,
             time.monotonic() - started, ", ".join(dict.fromkeys(served_by)) or "this machine")
    return Obtained(model, path, root)


async def _ask(nc: Client, node_id: str, ask: ModelAsk, patience_s: float) -> ModelAnswer | None:
    """The gate's answer (its last, when it kept saying "not yet" for ``patience_s``);
    None when no gate answered in that time."""
    deadline, answer = time.monotonic() + patience_s, None
    while True:
        try:
            reply = await nc.request(subjects.node_says(node_id, subjects.NODE_MODEL),
                                     ask.model_dump_json().encode(), timeout=ASK_TIMEOUT_S)
            answer = ModelAnswer.model_validate_json(reply.data)
            if answer.ok or answer.reason not in RETRY:
                return answer
        except (NatsError, asyncio.TimeoutError):
            pass
        if time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.5)
