"""The worker process: composition root and pull loop.

Own zone first, global when the zone has nothing: each turn probes the zone
queue, then the global one, without waiting. An idle worker sleeps on a
doorbell that rings when a job is queued on either subject, so it answers a
new job at once; ``SAFETY_POLL_S`` bounds the wait for redeliveries.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import nats

from bus import signing, subjects
from bus.config import Settings
from bus.nodes import ModelInfo, NodeRecord
from bus.streams import cancels_bucket, ensure_streams, ensure_work_consumer, nodes_bucket
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


def gpu_facts() -> dict:
    import torch  # the worker owns torch; imported here to keep start-up order explicit
    if not torch.cuda.is_available():
        return {"gpu": "cpu", "vram_total_gb": 0.0, "vram_free_gb": 0.0}
    free, total = torch.cuda.mem_get_info()
    return {"gpu": torch.cuda.get_device_name(), "vram_total_gb": total / 2**30,
            "vram_free_gb": free / 2**30}


async def pull_loop(zone: PullSource, global_: PullSource, bell: Doorbell, runner: JobRunner,
                    stop: asyncio.Event) -> None:
    while not stop.is_set():
        bell.clear()
        msg = await zone.next() or await global_.next()
        if msg is not None:
            try:
                await runner.run(msg)
            except Exception:  # noqa: BLE001 - unacked, the job is redelivered
                log.exception("job not recorded; it will be redelivered")
        else:
            await bell.wait(SAFETY_POLL_S)


async def run(settings: Settings, options: WorkerOptions, stop: asyncio.Event) -> None:
    subjects.check_token(options.zone, "zone")
    name, path = resolve(options.model, settings.models_dir)
    engine = await asyncio.to_thread(Engine.load, path, name)
    key_name = options.node_name or f"{options.zone}-{name}"
    key = signing.load_or_create_key(settings.data_dir / "node" / f"{key_name}.key")
    nc = await nats.connect(settings.resolved_nats_url(), name=f"worker-{options.zone}-{name}",
                            max_reconnect_attempts=-1)
    js = nc.jetstream()
    await ensure_streams(js, settings.stream_replicas)
    kv = await nodes_bucket(js, settings.stream_replicas)
    zones = (options.zone, subjects.GLOBAL)
    sources = []
    for zone in zones:
        consumer = await ensure_work_consumer(js, zone, name, settings.job_ack_wait_s)
        sources.append(await PullSource(nc, subjects.JOBS_STREAM, consumer).start())
    bell = await Doorbell(nc, [subjects.jobs(z, name) for z in zones]).start()
    cancels = await cancels_bucket(js, settings.job_timeout_s + settings.expiry_grace_s,
                                   settings.stream_replicas)
    runner = JobRunner(nc, js, engine, key, options.zone, options.operator, options.tier,
                       settings.job_ack_wait_s, settings.job_max_attempts, cancels)
    facts = gpu_facts()

    def record() -> NodeRecord:
        return NodeRecord(node_id=runner.node_id, zone=options.zone, operator=options.operator,
                          tier=options.tier, lat=options.lat, lon=options.lon, **facts,
                          models=(ModelInfo(name=name, context_length=engine.context_length),),
                          busy=runner.busy)

    beats = asyncio.create_task(heartbeat(kv, record, stop))
    log.info("worker %s… serving %s in zone %s on %s", runner.node_id[:12], name, options.zone,
             engine.device)
    try:
        await pull_loop(sources[0], sources[1], bell, runner, stop)
    finally:
        await beats
        await nc.drain()
