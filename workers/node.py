"""The worker process's composition root: one node serving one model.

It loads the model as a :class:`~workers.generation.Generator` (a continuous
``Batcher`` over a torch ``Engine``, or the echo model), connects with the
node's own NATS credentials, makes its queues' consumers, heartbeats its
``NodeRecord`` and runs the pull loop (:mod:`workers.pull_loop`): up to
``INFERBUS_MAX_BATCH`` jobs at once, each through ``JobRunner.run`` (lease,
replies, outcome, ack), their generations sharing the batcher's decode steps.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from bus import signing, subjects
from bus.config import Settings
from bus.connection import connect
from bus.guard import refuse_unsafe_bus
from bus.connection import nkey_seed
from bus.grants import NodeGrant, file_grant
from bus.node_record import ModelInfo, NodeRecord
from bus.streams import (cancels_bucket, ensure_work_consumer, grants_bucket, nodes_bucket,
                         wait_for_streams, worker_streams)
from workers.batching import Batcher
from workers.echo import EchoEngine, is_echo_model
from workers.embedder import Embedder, is_embedding_model
from workers.engine import Engine
from workers.gate_client import GateClient
from workers.generation import Generator
from workers.heartbeat import heartbeat
from workers.model_source import is_path, obtain
from workers.pull_loop import Doorbell, JobSource, pull_loop
from workers.runner import JobRunner

log = logging.getLogger("inferbus.worker")


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


def load_generator(settings: Settings, path, name: str) -> Generator:
    """What runs the jobs of the model in ``path``: the echo model, an embeddings
    model's ``Embedder``, or a continuous ``Batcher`` over a torch ``Engine``."""
    if is_echo_model(path):
        return EchoEngine.load(path, name)
    if is_embedding_model(path):  # an embeddings model: batched forward passes, no decoding
        return Embedder.load(path, name)
    dtype = None if settings.worker_dtype == "auto" else settings.worker_dtype
    return Batcher(Engine.load(path, name, dtype), settings.max_batch,
                   settings.kv_budget_mb * 2**20)


async def grant_itself(settings: Settings, js, options: WorkerOptions, node: str,
                       model: str) -> None:
    """On an open network (no NATS auth, so no admin grants anyone: a development
    setup), the node files its own grant from its flags. Where auth is on, the
    admin's ``inferbus nodes add`` writes it, and a worker's user may not."""
    log.warning("no NATS credentials: an open network, where this node grants itself "
                "zone %s, operator %s, tier %d", options.zone, options.operator, options.tier)
    grant = NodeGrant(node_id=node, node_name=options.node_name or f"{options.zone}-{model}",
                      operator=options.operator, zone=options.zone, models=(model,),
                      tier=options.tier, subcloud=options.subcloud, public=options.public)
    kv = await grants_bucket(js, settings.stream_replicas, settings.home_placement())
    await file_grant(kv, grant)


async def run(settings: Settings, options: WorkerOptions, stop: asyncio.Event,
              progress: bool = False) -> None:
    subjects.check_token(options.zone, "zone")
    name = Path(options.model).name if is_path(options.model) else options.model
    key_name = options.node_name or f"{options.zone}-{name}"
    key = signing.load_or_create_key(settings.data_dir / "node" / f"{key_name}.key")
    nc = await connect(settings, f"worker-{options.zone}-{name}")
    js = nc.jetstream()
    # Services make streams and buckets; a worker's NATS user may not (bus/auth.py).
    layout = settings.layout()
    await wait_for_streams(js, streams=worker_streams(layout, options.zone))
    await refuse_unsafe_bus(settings, js)
    kv = await nodes_bucket(js, settings.stream_replicas, settings.home_placement())
    node = signing.node_id(key)
    if nkey_seed(settings) is None:
        await grant_itself(settings, js, options, node, name)
    model = await obtain(settings, nc, node, options.model, progress)
    generator = await asyncio.to_thread(load_generator, settings, model.path, name)
    sources, consumers = [], []  # consumers: (stream, name), each queue's in its region
    for queue in queues(options, node):
        stream = layout.queue_stream(queue)
        consumers.append((stream, await ensure_work_consumer(
            js, queue, name, settings.job_ack_wait_s, stream)))
        sources.append(await JobSource(nc, *consumers[-1]).start())
    waiting = {"jobs": 0}

    async def refresh() -> None:
        """Jobs waiting in this node's own queues (not global, which every node shares),
        and the GPU's free memory and utilisation."""
        total = 0
        for stream, consumer in consumers:
            if consumer != subjects.consumer_name(subjects.GLOBAL, name):
                total += (await js.consumer_info(stream, consumer)).num_pending
        waiting["jobs"] = total
        facts.update(gpu_facts())  # free VRAM and utilisation change while serving
    bell = await Doorbell(nc, [subjects.jobs(q, name) for q in queues(options, node)]).start()
    job_life_s = settings.job_timeout_s + settings.expiry_grace_s
    cancels = await cancels_bucket(js, job_life_s, settings.stream_replicas,
                                   settings.home_placement())
    gate = GateClient(nc, node)
    runner = JobRunner(nc, generator, key, settings.job_ack_wait_s, settings.job_max_attempts,
                       cancels, gate, model_root=model.root)
    facts = gpu_facts()

    def record() -> NodeRecord:
        return NodeRecord(node_id=runner.node_id, zone=options.zone, operator=options.operator,
                          tier=options.tier, lat=options.lat, lon=options.lon, **facts,
                          models=(ModelInfo(name=name, context_length=generator.context_length,
                                            kind=getattr(generator, "kind", "chat"),
                                            dims=getattr(generator, "dims", None),
                                            root=model.root),),
                          busy=runner.busy, queue_depth=waiting["jobs"],
                          subcloud=options.subcloud, public=options.public)

    beats = asyncio.create_task(heartbeat(kv, record, stop, refresh))
    # Pings go on until the jobs running at a stop have finished: a silent node's
    # leases are taken over within LAPSE_S, and its finished work would be refused.
    pulled = asyncio.Event()
    pings = asyncio.create_task(gate.ping(pulled))
    log.info("worker %s… serving %s (root %s…) in zone %s on %s", runner.node_id[:12], name,
             model.root[:16], options.zone, generator.device)
    try:
        await pull_loop(sources, bell, runner.run, stop, settings.max_batch)
    finally:
        pulled.set()
        await beats
        await pings
        await asyncio.to_thread(generator.close)
        await nc.drain()
