"""The gate service: answers nodes' lease and outcome requests and watches
their liveness, until ``stop`` (``inferbus projector`` runs it beside the read
models and the money service; ``inferbus gate`` runs it alone).

Each node request is handled as a task of its own (a subscription's callbacks
run one at a time), in the ``gate`` queue group. Whatever a node sends that
the gate cannot accept (malformed, outside its grant, a forged result) is
refused, and costs the node a :class:`~bus.events.NodeStrike` on the log, at
most one a node per ``STRIKE_EVERY_S`` so a flood cannot flood the log.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from bus import subjects
from bus.config import Settings
from bus.events import NodeStrike
from bus.credentials import CredentialStore
from bus.checks import Sampler
from bus.node_location import checks_on
from bus.grants import GrantBook, NodeGrant, file_grant
from bus.leases import Leases
from bus.node_messages import LeaseAnswer, LeaseAsk, OutcomeAnswer, parse_outcome
from bus.publish import publish_event
from bus.streams import cancels_bucket, claims_bucket, grants_bucket
from bus.model_book import CatalogBook, NodeRoots
from bus.model_fetch import ModelAnswer, ModelAsk
from bus.model_store import ModelStore, NotPublished
from bus.streams import models_bucket, nodes_bucket
from gate.leasing import Leasing, NotTheirs
from gate.model_access import ModelAccess, OutsideGrant
from gate.model_drain import Drain
from gate.liveness import LAPSE_S, Liveness
from gate.results import Outcomes, Refused
from gate.usage import Counters

log = logging.getLogger("inferbus.gate")
STRIKE_EVERY_S = 1.0
NO_GRANT_WAIT_S = 1.0  # a node without an active grant gives its deliveries back


class Gate:
    def __init__(self, nc: Client, grants: GrantBook, leasing: Leasing, outcomes: Outcomes,
                 liveness: Liveness, models: ModelAccess | None = None) -> None:
        self.nc, self.js, self.grants, self.models = nc, nc.jetstream(), grants, models
        self.leasing, self.outcomes, self.liveness = leasing, outcomes, liveness
        self._tasks: set[asyncio.Task] = set()
        self._struck: dict[str, float] = {}
        self.strikes = 0

    async def start(self) -> list:
        return [await self.nc.subscribe(subjects.all_nodes_say(subjects.NODE_LEASE),
                                        subjects.GATE_QUEUE, cb=self._spawn(self.on_lease)),
                await self.nc.subscribe(subjects.all_nodes_say(subjects.NODE_OUTCOME),
                                        subjects.GATE_QUEUE, cb=self._spawn(self.on_outcome)),
                await self.nc.subscribe(subjects.all_nodes_say(subjects.NODE_MODEL),
                                        subjects.GATE_QUEUE, cb=self._spawn(self.on_model)),
                await self.nc.subscribe(subjects.all_nodes_say(subjects.NODE_ALIVE),
                                        cb=self.on_alive)]

    def _spawn(self, handler):
        async def cb(msg: Msg) -> None:
            task = asyncio.create_task(handler(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return cb

    async def on_alive(self, msg: Msg) -> None:
        if (node := subjects.sender_node(msg.subject)) is not None:
            self.liveness.ping(node)

    def _grant(self, msg: Msg) -> NodeGrant | None:
        node = subjects.sender_node(msg.subject)
        grant = self.grants.get(node) if node else None
        return grant if grant is not None and grant.active else None

    async def on_lease(self, msg: Msg) -> None:
        grant = self._grant(msg)
        if grant is None:
            return await _answer(msg, LeaseAnswer(action="wait", delay_s=NO_GRANT_WAIT_S,
                                                  reason="no active grant for this node"))
        try:
            ask = LeaseAsk.model_validate_json(msg.data)
            answer = await (self.leasing.acquire(grant, ask) if ask.op == "acquire"
                            else self.leasing.renew(grant, ask))
        except (ValidationError, NotTheirs) as exc:
            await self.strike(grant, f"lease request refused: {_first(exc)}", msg.data)
            answer = LeaseAnswer(action="stop", reason=_first(exc))
        except Exception as exc:  # noqa: BLE001 - the bus is away: the node tries again
            log.warning("lease request of %s failed: %s", grant.node_id[:12], exc)
            answer = LeaseAnswer(action="wait", delay_s=1.0, reason="try again")
        await _answer(msg, answer)

    async def on_outcome(self, msg: Msg) -> None:
        grant = self._grant(msg)
        if grant is None:
            return await _answer(msg, OutcomeAnswer(logged=False, reason="no active grant"))
        job_id = None
        try:
            said = parse_outcome(msg.data)
            job_id = said.job_id
            answer = await self.outcomes.report(grant, said)
        except (ValidationError, Refused) as exc:
            reason = exc.reason if isinstance(exc, Refused) else _first(exc)
            if not isinstance(exc, Refused) or exc.strike:
                await self.strike(grant, f"outcome refused: {reason}", msg.data, job_id)
            if isinstance(exc, Refused) and exc.strike and job_id:
                await self._move_on(grant, job_id, reason)
            answer = OutcomeAnswer(logged=False, reason=reason)
        except Exception as exc:  # noqa: BLE001 - the bus is away: the node reports again
            log.warning("outcome of %s failed: %s", grant.node_id[:12], exc)
            return  # no answer: the node's request times out and it reports again
        await _answer(msg, answer)

    async def on_model(self, msg: Msg) -> None:
        """A node's manifest or fetch request (``gate.model_access``)."""
        grant = self._grant(msg)
        if grant is None or self.models is None:
            return await _answer(msg, ModelAnswer(ok=False, reason="no active grant for this node"
                                                  if self.models else "no model store here"))
        try:
            answer = await self.models.answer(grant, ModelAsk.model_validate_json(msg.data))
        except (ValidationError, OutsideGrant) as exc:
            await self.strike(grant, f"model request refused: {_first(exc)}", msg.data)
            answer = ModelAnswer(ok=False, reason=_first(exc))
        except NotPublished as exc:
            answer = ModelAnswer(ok=False, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - the store is away: the node asks again
            log.warning("model request of %s failed: %s", grant.node_id[:12], exc)
            answer = ModelAnswer(ok=False, reason="try again")
        await _answer(msg, answer)

    async def _move_on(self, grant: NodeGrant, job_id: str, reason: str) -> None:
        held = await self.leasing.find(job_id)
        if held is not None and held.node_id == grant.node_id and not held.lease.lease.done:
            await self.liveness.move_on(held, f"its node's result was refused: {reason}")

    async def strike(self, grant: NodeGrant, reason: str, evidence: bytes,
                     job_id: str | None = None) -> None:
        log.warning("strike for node %s: %s", grant.node_id[:12], reason)
        now = time.monotonic()
        if now - self._struck.get(grant.node_id, -1e9) < STRIKE_EVERY_S:
            return
        self._struck[grant.node_id] = now
        self.strikes += 1
        with contextlib.suppress(Exception):
            await publish_event(self.js, NodeStrike(
                node_id=grant.node_id, reason=reason[:2000], job_id=job_id,
                evidence=evidence[:4096].decode(errors="replace")), grant.zone)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def _answer(msg: Msg, answer) -> None:
    if msg.reply:
        with contextlib.suppress(Exception):
            await msg.respond(answer.model_dump_json().encode())


def _first(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(exc)


async def serve(settings: Settings, nc: Client, stop: asyncio.Event,
                counters: Counters | None = None, lapse_s: float = LAPSE_S) -> None:
    """Run the gate over ``nc`` (a service connection) until ``stop``; a node silent
    for ``lapse_s`` while holding a lease is dead (:mod:`gate.liveness`)."""
    js = nc.jetstream()
    life_s = settings.job_timeout_s + settings.expiry_grace_s
    replicas, home = settings.stream_replicas, settings.home_placement()
    claims = await claims_bucket(js, life_s, replicas, home)
    cancels = await cancels_bucket(js, life_s, replicas, home)
    kv = await grants_bucket(js, replicas, home)
    for granted in CredentialStore(settings.data_dir).grants():
        # The admin's record in this data dir (`nodes add` while no network ran).
        await file_grant(kv, granted.network_grant())
    grants = await GrantBook().follow(kv)
    catalog = await CatalogBook(settings.published_models_only).follow(
        await models_bucket(js, replicas, home))
    roots = await NodeRoots().follow(await nodes_bucket(js, replicas, home))
    leasing = Leasing(nc, js, Leases(claims, settings.job_ack_wait_s), settings.layout(),
                      check_locations=checks_on(settings))
    leasing.model_refusal = lambda node, model: catalog.refusal(model, roots.root(node, model))
    store = ModelStore(js, settings.layout(), replicas)
    counters = counters or Counters(settings.models_dir, store)
    warming = asyncio.create_task(counters.warm())
    outcomes = Outcomes(nc, js, leasing, counters, cancels, Sampler(settings.spot_check_share),
                        catalog)
    gate = Gate(nc, grants, leasing, outcomes, Liveness(nc, js, leasing, grants, lapse_s),
                ModelAccess(store))
    subs = await gate.start()
    draining = asyncio.create_task(Drain(store, catalog, roots, gate.liveness.alive,
                                         settings.model_drain_s).run(stop))
    log.info("gate serving")
    try:
        await gate.liveness.watch(stop)
    finally:
        draining.cancel()
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await gate.close()
        await grants.close()
        await catalog.close()
        await roots.close()
        warming.cancel()
