"""One chaos soak: a stack on a 3-node JetStream cluster, seeded load, the
seeded fault schedule, then the verdict.

The stack: the projector, an API, and three workers of the tiny random-weight
model (two in ``eu``, one in ``na``), all on ``INFERBUS_STREAM_REPLICAS=3``
with ``INFERBUS_PRODUCTION=1`` (1 replica on a single server). Deadlines are
short (job timeout 20 s, expiry grace 2 s, lease 2 s) so that whatever a fault
leaves held is swept within the settle wait. After the load stops and every
fault is repaired (``judge``): every process runs and every worker beats, a
fresh sync request completes, the log and the ledger hold nothing open, every
request ended in a way its client understands, each job was charged what its
outcome asks (``billing``), ``inferbus audit`` passes with nothing open, and no
process log shows an exception that only a bug explains (``logscan``).
"""
from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bus.signing import load_or_create_key, node_id
from tests.chaos import billing, logscan, verdict
from tests.chaos.faults import Bus, Injector
from tests.chaos.load import Load
from tests.chaos.schedule import plan, render
from tests.natsd import NatsCluster, NatsServer
from tests.stack import Stack
from tests.tiny_model import build_tiny_model

MODEL = "tiny-random"
WORKERS = ("worker-eu-a", "worker-eu-b", "worker-na-a")  # the zone is the name's middle
JOB_TIMEOUT_S, GRACE_S, ACK_WAIT_S, SWEEP_S = 20, 2, 2, 5
# The last job's deadline, its grace (ten more when an outcome awaits a late
# settlement, ledger/settlement.py), two sweeps, and slack.
SETTLE_S = JOB_TIMEOUT_S + 11 * GRACE_S + 2 * SWEEP_S + 20
MIN_COMPLETED = 0.25  # of all requests: under chaos the network must still mostly serve


@dataclass
class Config:
    seed: int
    minutes: float
    root: Path  # scratch: stores, logs, models
    models_dir: Path | None = None  # holding MODEL; built in ``root`` when None
    single_nats: bool = False  # one server instead of the 3-node cluster
    threads: int = 3


def start_bus(cfg: Config) -> Bus:
    if cfg.single_nats:
        (cfg.root / "nats").mkdir(parents=True, exist_ok=True)
        return Bus(single=NatsServer(cfg.root / "nats" / "store").start())
    return Bus(cluster=NatsCluster(cfg.root / "cluster").start())


def make_stack(cfg: Config, bus: Bus) -> Stack:
    models = cfg.root / "models"
    if cfg.models_dir is not None:
        shutil.copytree(cfg.models_dir / MODEL, models / MODEL)
    else:
        build_tiny_model(models / MODEL)
    return Stack(cfg.root, bus.url, env_extra={
        **bus.env(), "INFERBUS_JOB_TIMEOUT_S": str(JOB_TIMEOUT_S),
        "INFERBUS_EXPIRY_GRACE_S": str(GRACE_S), "INFERBUS_JOB_ACK_WAIT_S": str(ACK_WAIT_S),
        "INFERBUS_RATE_PER_MINUTE": "100000"})  # the soak's one key sends everything


def boot(stack: Stack) -> None:
    """Every part up, a funded key, the model served in both zones."""
    stack.start_projector()
    for name in WORKERS:
        stack.start_worker(name.split("-")[1], MODEL, name)
    stack.start_api()
    stack.key = stack.new_key("soak", credits="1000000")
    stack.wait_for_model(stack.key, MODEL, zones=2, timeout=180)


def serves_again(stack: Stack, within_s: float = 90.0) -> verdict.Check:
    """A new sync request completes once everything is repaired (503s retried)."""
    deadline, last = time.monotonic() + within_s, ""
    while time.monotonic() < deadline:
        try:
            r = httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=60,
                           headers={"Authorization": f"Bearer {stack.key}"},
                           json={"model": MODEL, "max_tokens": 4,
                                 "messages": [{"role": "user", "content": "still there?"}]})
            if r.status_code == 200:
                return verdict.Check("serves again after the chaos", True,
                                     f"job {r.headers.get('x-inferbus-job')}")
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(1.0)
    return verdict.Check("serves again after the chaos", False, last)


def live_node_ids(stack: Stack) -> set[str]:
    """The 12-hex node ids ``/status.json`` shows live (a beat under 3 s old)."""
    try:
        zones = httpx.get(f"{stack.base_url}/status.json", timeout=10).json()["zones"]
    except (httpx.HTTPError, ValueError, KeyError):
        return set()
    return {n["node_id"] for z in zones.values() for n in z["nodes"]}


def workers_live(stack: Stack, within_s: float = 90.0) -> verdict.Check:
    """Every worker beats again: a process that is up but no longer serves (its
    pull loop died on a bus error) is caught here, not by ``survivors``."""
    ids = {name: node_id(load_or_create_key(stack.data_dir / "node" / f"{name}.key"))[:12]
           for name in WORKERS}
    deadline = time.monotonic() + within_s  # a worker restarted last is still loading
    while (missing := sorted(n for n, i in ids.items() if i not in live_node_ids(stack))) \
            and time.monotonic() < deadline:
        time.sleep(1.0)
    return verdict.Check("every worker is live again", not missing,
                         f"not live: {missing}" if missing else f"{len(ids)} live")


def survivors(stack: Stack) -> verdict.Check:
    """No process died on its own: every exit was the schedule's."""
    dead = {n: p.returncode for n, p in stack.procs.items() if p.poll() is not None}
    tails = "; ".join(f"{n} exited {rc}: {stack.log(n)[-400:]!r}" for n, rc in dead.items())
    return verdict.Check("no process died on its own", not dead, tails or "all running")


def run(cfg: Config) -> dict:
    """Run the soak; returns the report (``report["ok"]`` is the verdict)."""
    bus = start_bus(cfg)
    faults = plan(cfg.seed, cfg.minutes, WORKERS, bus.size)
    print(render(cfg.seed, faults), flush=True)
    began = time.monotonic()
    stack = None
    try:
        stack = make_stack(cfg, bus)
        boot(stack)
        load, injector, load_s = exercise(cfg, stack, bus, faults)
        out = judge(cfg, stack, bus, faults, load, injector)
        out.update(load_s=round(load_s, 1), total_s=round(time.monotonic() - began, 1))
        return out
    finally:
        if stack is not None:
            stack.stop()
        bus.stop()


def exercise(cfg: Config, stack: Stack, bus: Bus, faults) -> tuple[Load, Injector, float]:
    """The load for ``cfg.minutes`` with the schedule played against it; returns
    once every fault is repaired and every request has ended."""
    load = Load(stack.base_url, stack.key, MODEL, cfg.seed, threads=cfg.threads,
                request_timeout=JOB_TIMEOUT_S + 15, poll_for=SETTLE_S)
    t0 = time.monotonic()
    load.start()
    injector = Injector(stack, bus, faults).start(t0)
    time.sleep(max(0.0, t0 + cfg.minutes * 60 - time.monotonic()))
    injector.join(timeout=120)  # an episode still repairing (a NATS node catching up)
    load.stop()
    return load, injector, time.monotonic() - t0


def judge(cfg: Config, stack: Stack, bus: Bus, faults, load: Load, injector: Injector) -> dict:
    """Every check, in the order a reader wants them, and the report around them."""
    checks = [survivors(stack), serves_again(stack), workers_live(stack)]
    state, held, log = verdict.settle(bus.url, stack.base_url, stack.key, SETTLE_S)
    checks += verdict.settle_checks(state, held)
    checks += verdict.request_checks(load.results, stack.base_url, stack.key)
    bill = billing.judge(log, GRACE_S)
    checks.append(verdict.Check("each job charged what its outcome asks", not bill.wrong,
                                "; ".join(bill.wrong[:3]) or f"{bill.checked} jobs, "
                                f"{len(bill.late)} swept just before settlement"))
    failed = [d.error for d in injector.done if d.error]
    checks.append(verdict.Check("every planned fault injected",
                                len(injector.done) == len(faults) and not failed,
                                f"{len(injector.done)} of {len(faults)}; errors: {failed}"))
    completed, sent = load.count("completed"), len(load.results)
    checks.append(verdict.Check(f"at least {MIN_COMPLETED:.0%} of requests completed",
                                completed >= MIN_COMPLETED * max(1, sent),
                                f"{completed} of {sent}"))
    audit, audit_text = verdict.audit_check(stack)
    checks.append(audit)
    by_process, bugs = logscan.scan(cfg.root)
    checks.append(verdict.Check("no exception in a process log that is a bug", not bugs,
                                "; ".join(bugs[:3]) or "none"))
    results = load.results
    odd = [r.job_id for r in results if r.job_id and r.outcome not in
           ("completed", "disconnected")] + state.jobs + state.reservations
    modes = sorted({r.mode for r in results})
    return {
        "ok": all(c.ok for c in checks), "seed": cfg.seed, "minutes": cfg.minutes,
        "nats": "single server" if cfg.single_nats else "3-node cluster",
        "requests": len(results),
        "outcomes": dict(Counter(r.outcome for r in results)),
        "by_mode": {m: dict(Counter(r.outcome for r in results if r.mode == m)) for m in modes},
        "logged_endings": {  # how each mode's accepted jobs ended on the log
            m: dict(Counter(state.outcomes.get(r.job_id, "none") for r in results
                            if r.mode == m and r.job_id)) for m in modes},
        "error_codes": dict(Counter(f"{r.outcome}:{r.status}:{r.code}" for r in results
                                    if r.outcome in ("failed", "refused", "broken"))),
        "faults_planned": [f.as_dict() for f in faults],
        "faults_injected": [{**d.fault.as_dict(), "started_s": d.started_s,
                             "repaired_s": d.repaired_s, "error": d.error}
                            for d in injector.done],
        "checks": [asdict(c) for c in checks],
        "audit": audit_text,
        "exceptions_logged": by_process,
        "histories": verdict.histories(log, odd),
        "broken": [asdict(r) for r in results if r.outcome == "broken"][:20],
    }
