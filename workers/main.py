"""The worker process: composition root and pull loop.

First choice first: each turn probes, without waiting, the node's own queue,
its subcloud's pool, its zone, then global. An idle worker sleeps on a
doorbell that rings when a job is queued on any of them, so it answers a
new job at once; ``SAFETY_POLL_S`` bounds the wait for redeliveries.

Up to ``INFERBUS_MAX_BATCH`` jobs run at once, each as its own task through
``JobRunner.run`` (lease, replies, outcome, ack); their generations share the
engine's decode steps through one ``Batcher``.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from bus import signing, subjects
from bus.config import Settings
from bus.connection import connect
from bus.guard import refuse_unsafe_bus
from bus.leases import Leases
from bus.nodes import ModelInfo, NodeRecord
from bus.streams import (cancels_bucket, claims_bucket, ensure_work_consumer, nodes_bucket,
                         wait_for_streams)
from workers.batching import Batcher
from workers.echo import EchoEngine, is_echo_model
from workers.engine import Engine
from workers.heartbeat import heartbeat
from workers.jobs import JobRunner
from workers.models import resolve
from workers.pull import Doorbell, PullSource

log = logging.getLogger("inferbus.worker")
SAFETY_POLL_S = 1.0


@dataclass(frozen=True)
class WorkerOptions:
    zone: str
    model: str
    operator: str = "operator"
    tier: int = 1
    lat: float | None = None
    lon: float | None = None
    node_name: str | None = None  # names the key file; default <zone>-<model>
    subcloud: str | None = None  # serve this subcloud's private pool
    public: bool = True  # with a subcloud: serve public zone/global jobs too


def gpu_facts() -> dict:
    import torch  # the worker owns torch; imported here to keep start-up order explicit
    if not torch.cuda.is_available():
        return {"gpu": "cpu", "vram_total_gb": 0.0, "vram_free_gb": 0.0}
    free, total = torch.cuda.mem_get_info()
    try:
        util = float(torch.cuda.utilization())  # needs NVML; not every install has it
    except Exception:  # noqa: BLE001
        util = None
    return {"gpu": torch.cuda.get_device_name(), "vram_total_gb": total / 2**30,
            "vram_free_gb": free / 2**30, "gpu_util": util}


def queues(options: WorkerOptions, node_id: str) -> list[str]:
    """The queues this worker pulls, first choice first: jobs sent to this very
    node, its subcloud's pool, its zone, then global."""
    return subjects.worker_queues(options.zone, node_id, options.subcloud, options.public)


def load_engine(settings: Settings, path, name: str) -> tuple[Engine | EchoEngine,
                                                              Batcher | EchoEngine]:
    """The model in ``path`` and what runs its jobs: a continuous ``Batcher`` over a
    torch ``Engine``, or an echo model, which is both at once (``workers.echo``)."""
    if is_echo_model(path):
        engine = EchoEngine.load(path, name)
        return engine, engine
    dtype = None if settings.worker_dtype == "auto" else settings.worker_dtype
    engine = Engine.load(path, name, dtype)
    return engine, Batcher(engine, settings.max_batch, settings.kv_budget_mb * 2**20)


async def next_jobs(sources: list[PullSource], room: int) -> list:
    """Up to ``room`` jobs, first choice first: each queue is asked for what room is
    left, so a busy zone fills a node in one round trip per queue, not one per job."""
    found: list = []
    for source in sources:
        if len(found) >= room:
            break
        found += await source.take(room - len(found))
    return found


async def pull_loop(sources: list[PullSource], bell: Doorbell, runner: JobRunner,
                    stop: asyncio.Event, max_jobs: int = 1) -> None:
    """Take jobs, first choice first, while fewer than ``max_jobs`` run; each runs as a
    task of its own. On ``stop``, takes no more and waits for those running."""
    free = asyncio.Semaphore(max_jobs)
    running: set[asyncio.Task] = set()

    async def run_one(msg) -> None:
        try:
            await runner.run(msg)
        except Exception:  # noqa: BLE001 - unacked, the job is redelivered
            log.exception("job not recorded; it will be redelivered")
        finally:
            free.release()

    try:
        while not stop.is_set():
            await free.acquire()
            room = 1
            while not free.locked():  # every free slot, taken without waiting
                await free.acquire()
                room += 1
            bell.clear()
            msgs = [] if stop.is_set() else await next_jobs(sources, room)
            for _ in range(room - len(msgs)):
                free.release()
            for msg in msgs:
                task = asyncio.create_task(run_one(msg))
                running.add(task)
                task.add_done_callback(running.discard)
            if not msgs and not stop.is_set():
                await bell.wait(SAFETY_POLL_S)
    finally:
        if running:
            await asyncio.gather(*running, return_exceptions=True)


async def run(settings: Settings, options: WorkerOptions, stop: asyncio.Event) -> None:
    subjects.check_token(options.zone, "zone")
    name, path = resolve(options.model, settings.models_dir)
    engine, batcher = await asyncio.to_thread(load_engine, settings, path, name)
    key_name = options.node_name or f"{options.zone}-{name}"
    key = signing.load_or_create_key(settings.data_dir / "node" / f"{key_name}.key")
    nc = await connect(settings, f"worker-{options.zone}-{name}")
    js = nc.jetstream()
    # Services make streams and buckets; a worker's NATS user may not (bus/auth.py).
    await wait_for_streams(js)
    await refuse_unsafe_bus(settings, js)
    kv = await nodes_bucket(js, settings.stream_replicas)
    node = signing.node_id(key)
    sources, consumers = [], []
    for queue in queues(options, node):
        consumers.append(await ensure_work_consumer(js, queue, name, settings.job_ack_wait_s))
        sources.append(await PullSource(nc, subjects.JOBS_STREAM, consumers[-1]).start())
    waiting = {"jobs": 0}

    async def refresh() -> None:
        """Jobs waiting in this node's own queues (not global, which every node shares),
        and the GPU's free memory and utilisation."""
        total = 0
        for consumer in consumers:
            if consumer != subjects.consumer_name(subjects.GLOBAL, name):
                total += (await js.consumer_info(subjects.JOBS_STREAM, consumer)).num_pending
        waiting["jobs"] = total
        facts.update(gpu_facts())  # free VRAM and utilisation change while serving
    bell = await Doorbell(nc, [subjects.jobs(q, name) for q in queues(options, node)]).start()
    job_life_s = settings.job_timeout_s + settings.expiry_grace_s
    cancels = await cancels_bucket(js, job_life_s, settings.stream_replicas)
    claims = await claims_bucket(js, job_life_s, settings.stream_replicas)
    runner = JobRunner(nc, js, engine, key, options.zone, options.operator, options.tier,
                       settings.job_ack_wait_s, settings.job_max_attempts, cancels,
                       Leases(claims, lease_s=settings.job_ack_wait_s), batcher=batcher)
    facts = gpu_facts()

    def record() -> NodeRecord:
        return NodeRecord(node_id=runner.node_id, zone=options.zone, operator=options.operator,
                          tier=options.tier, lat=options.lat, lon=options.lon, **facts,
                          models=(ModelInfo(name=name, context_length=engine.context_length),),
                          busy=runner.busy, queue_depth=waiting["jobs"],
                          subcloud=options.subcloud, public=options.public)

    beats = asyncio.create_task(heartbeat(kv, record, stop, refresh))
    log.info("worker %s… serving %s in zone %s on %s", runner.node_id[:12], name, options.zone,
             engine.device)
    try:
        await pull_loop(sources, bell, runner, stop, settings.max_batch)
    finally:
        await beats
        await asyncio.to_thread(batcher.close)
        await nc.drain()
