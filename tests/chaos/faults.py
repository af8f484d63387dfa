"""Injecting a soak's faults into a running stack, one episode at a time.

:class:`Bus` puts a 3-node :class:`~tests.natsd.NatsCluster` and a single
:class:`~tests.natsd.NatsServer` behind one face (``kill(i)``, ``restart(i)``),
so the same schedule runs on either. :class:`Injector` plays a schedule from
its own thread: it sleeps until each fault's planned offset, breaks the
target, holds, repairs, and records what it actually did and when.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

from tests.chaos.schedule import NATS_KILL, PROJECTOR_KILL, WORKER_KILL, WORKER_STALL, Fault
from tests.natsd import NatsServer
from tests.stack import Stack

READY_TIMEOUT_S = 60.0  # a restarted NATS node catching up on three replicated streams


class Bus:
    """The NATS side of the soak: a cluster, or one server standing in for it."""

    def __init__(self, cluster=None, single: NatsServer | None = None) -> None:
        assert (cluster is None) != (single is None)
        self.cluster, self.single = cluster, single

    @property
    def url(self) -> str:
        return self.cluster.url if self.cluster else self.single.url

    @property
    def size(self) -> int:
        return len(self.cluster.nodes) if self.cluster else 1

    def env(self) -> dict[str, str]:
        """What the stack runs with on this bus: on the cluster, the production
        shape (3 replicas, and the guard that checks every server fsyncs)."""
        if not self.cluster:
            return {"INFERBUS_STREAM_REPLICAS": "1"}
        return {"INFERBUS_STREAM_REPLICAS": str(self.size), "INFERBUS_PRODUCTION": "1",
                "INFERBUS_NATS_MONITOR_URL": self.cluster.monitor_url}

    def kill(self, i: int) -> None:
        if self.cluster:
            self.cluster.kill(i)
        else:
            self.single.proc.send_signal(signal.SIGKILL)
            self.single.proc.wait(timeout=10)

    def restart(self, i: int) -> None:
        """Back on the same ports and store; returns once JetStream is healthy again."""
        if self.cluster:
            self.cluster.restart(i, wait=False)
            self.cluster.wait_ready(READY_TIMEOUT_S)
        else:
            self.single.start()  # same port and store dir: the clients reconnect

    def stop(self) -> None:
        (self.cluster or self.single).stop()


@dataclass
class Done:
    """A fault as it was injected: planned offset, actual offset, and any error."""

    fault: Fault
    started_s: float
    repaired_s: float | None = None
    error: str | None = None


@dataclass
class Injector:
    stack: Stack
    bus: Bus
    faults: list[Fault]
    t0: float = 0.0  # time.monotonic() when the load started
    done: list[Done] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, t0: float) -> "Injector":
        self.t0 = t0
        self._thread = threading.Thread(target=self._play, name="chaos", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        """Wait for the schedule's end; past ``timeout`` stop starting new faults."""
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join()

    def _play(self) -> None:
        for fault in self.faults:
            if self._stop.wait(max(0.0, self.t0 + fault.at_s - time.monotonic())):
                return
            record = Done(fault, round(time.monotonic() - self.t0, 1))
            self.done.append(record)
            try:
                self._episode(fault)
            except Exception as exc:  # noqa: BLE001 - recorded; the verdict fails the run
                record.error = f"{type(exc).__name__}: {exc}"
            record.repaired_s = round(time.monotonic() - self.t0, 1)
            print(f"  chaos {fault.describe()}  done t+{record.started_s:.1f}s.."
                  f"{record.repaired_s:.1f}s" + (f"  ERROR {record.error}" if record.error
                                                  else ""), flush=True)

    def _episode(self, fault: Fault) -> None:
        """Break ``fault.target``, hold it broken, repair it."""
        if fault.kind == WORKER_KILL:
            args = self.stack.procs[fault.target].args[3:]  # after `python -m cli`
            self.stack.kill(fault.target)
            time.sleep(fault.hold_s)
            self.stack.start(fault.target, *args)
        elif fault.kind == WORKER_STALL:
            pid = self.stack.procs[fault.target].pid
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(fault.hold_s)
            finally:
                os.kill(pid, signal.SIGCONT)
        elif fault.kind == NATS_KILL:
            i = int(fault.target.removeprefix("nats-"))
            self.bus.kill(i)
            time.sleep(fault.hold_s)
            self.bus.restart(i)
        elif fault.kind == PROJECTOR_KILL:
            self.stack.kill("projector")
            time.sleep(fault.hold_s)
            self.stack.start_projector()
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")
