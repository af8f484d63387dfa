"""``inferbus up``: the whole network on one machine, as child processes.

Order: NATS (embedded unless ``INFERBUS_NATS_URL``), the demo key, the model
published into the network's store (converted first if it never was), projector,
gate, verifier, workers (each fetches the model by its root), API. The embedded
server runs with nkey auth on (bus/credentials.py): the API, projector and admin
commands use the service user, and each worker its own user, which may only pull
its queues and log its jobs' outcomes. Children run in their own sessions so Ctrl-C
reaches only this supervisor, which stops the workers and APIs, then the services,
then NATS. Everything durable lives in the data dir: a second ``up`` keeps the jobs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bus.config import NATS_URL_FILE, REGIONS_FILE, Settings
from bus.credentials import CredentialStore
from bus.credits import MICRO
from bus.subjects import GLOBAL
from cli import admin, model_admin, natsserver, node_grants
from workers import models
from workers.models import resolve
from workers.embedding_models import DEFAULT_EMBEDDING_MODEL
from cli.up_embeddings import Embedder, curl_line as embeddings_curl, embedder_for

ZONES = ("eu", "na")
DEMO_ACCOUNT = "demo"
DEMO_CREDITS = 100


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)  # its own, over the network's
    proc: subprocess.Popen | None = None
    restarts: int = 0

    def start(self, env: dict[str, str], log_dir) -> None:
        log = open(log_dir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", *self.args],
                                     env={**env, **self.env},
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@dataclass
class Network:
    settings: Settings
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    children: list[Child] = field(default_factory=list)
    nats: subprocess.Popen | None = None
    regional: dict[str, str] = field(default_factory=dict)  # region -> its servers' URLs
    own_regions: bool = False
    stopping: bool = False
    embeddings: str | None = DEFAULT_EMBEDDING_MODEL  # None: no embeddings worker
    embedder: Embedder | None = None

    def _env(self, nats_url: str) -> dict[str, str]:
        # Only published roots are served: up publishes the one model it runs.
        return {**os.environ, "INFERBUS_NATS_URL": nats_url, "INFERBUS_PUBLISHED_MODELS_ONLY": "1",
                "INFERBUS_DATA_DIR": str(self.settings.data_dir), "PYTHONUNBUFFERED": "1"}

    def _local_model(self) -> tuple[str, Path]:
        """(name, directory) of the model to publish: a directory given, or a catalog
        model, converted into the models dir the first time."""
        try:
            return resolve(self.model, self.settings.models_dir)
        except FileNotFoundError:
            if self.model not in models.CATALOG:
                raise
        print(f"converting {self.model} (once) ...", flush=True)
        return self.model, models.pull(self.model, self.settings.models_dir,
                                       progress=sys.stderr.isatty())

    def _grant(self, model_name: str, node_names: dict[str, str]) -> Path:
        """The service user and one user per worker; returns the users file."""
        store = CredentialStore(self.settings.data_dir)
        self.settings = self.settings.model_copy(
            update={"nats_nkey_seed": store.ensure_service()})  # for the demo key
        for zone, node_name in node_names.items():
            # Our own workers on our own machine: vouched for, no probation.
            node_grants.grant_worker(self.settings, zone, model_name, node_name, verified=True)
        if self.embedder:
            self.embedder.grant(self.settings)
        return store.write_config(self.settings.layout())

    def _nats_url(self, model_name: str, node_names: dict[str, str]) -> str:
        if self.settings.nats_url:  # not ours: its users are its admin's business
            return self.settings.nats_url
        config = self._grant(model_name, node_names)
        layout = self.settings.layout()
        if layout.split:  # a supercluster: one server per region, joined by gateways
            self.own_regions = True  # stopped on the way out, even if one fails to start
            self.regional = natsserver.start_regions(self.settings.data_dir,
                                                     list(layout.regions), config)
            url = self.regional[layout.home]
            spec = ";".join(f"{r}={','.join(layout.zones(r))}" for r in layout.regions)
            (self.settings.data_dir / REGIONS_FILE).write_text(spec + "\n")
            (self.settings.data_dir / NATS_URL_FILE).write_text(url + "\n")
            return url
        port = natsserver.pick_port()
        self.nats = natsserver.start(self.settings.data_dir, port, config)
        url = f"nats://127.0.0.1:{port}"
        (self.settings.data_dir / NATS_URL_FILE).write_text(url + "\n")
        return url

    def _demo_key(self) -> str:
        path = self.settings.data_dir / "demo.key"
        if path.exists():
            return path.read_text().strip()
        key = admin.run(admin.create_key(self.settings, DEMO_ACCOUNT,
                                         micro_credits=DEMO_CREDITS * MICRO))
        path.write_text(key + "\n")
        path.chmod(0o600)
        return key

    def start(self) -> str:
        apis = len(self.settings.layout().regions)  # one API per region, on --port and up
        for port in range(self.port, self.port + apis):
            if not natsserver.port_free(port, self.host):
                raise RuntimeError(f"{self.host}:{port} is in use (another `inferbus up`?); "
                                   "choose another with --port")
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.settings.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        model_name, model_dir = self._local_model()
        self.model = model_name  # what the workers serve and the API lists
        layout = self.settings.layout()
        # A worker in each region's first zone (eu and na with one region).
        zones = [layout.zones(r)[0] for r in layout.regions] if layout.split else ZONES
        # Spelled out (the default a worker picks) so key file and grant agree.
        node_names = {zone: f"{zone}-{model_name}" for zone in zones}
        self.embedder = embedder_for(self.embeddings, zones[0])
        url = self._nats_url(model_name, node_names)
        self.settings = self.settings.model_copy(update={"nats_url": url})
        key = self._demo_key()
        # Published into the network's own store: every worker fetches it by its root.
        pushed = admin.run(model_admin.push(self.settings, model_dir, model_name,
                                            ",".join(layout.regions)))
        print(f"model {model_name}: root {pushed.root[:16]}… in {', '.join(pushed.regions)}",
              flush=True)
        if self.embedder:
            self.embedder.publish(self.settings, ",".join(layout.regions))
        store = CredentialStore(self.settings.data_dir)
        auth = self.nats is not None  # our server: each child gets its own user

        def seed(path: Path) -> dict[str, str]:
            return {"INFERBUS_NATS_NKEY_SEED": str(path)} if auth else {}
        def where(zone: str | None = None, region: str | None = None) -> dict[str, str]:
            """A child's region: its servers and INFERBUS_REGION (the home one by default)."""
            if not self.regional:
                return {}
            region = region or layout.region_of(zone or GLOBAL)
            return {"INFERBUS_NATS_URL": self.regional[region], "INFERBUS_REGION": region}
        service = seed(store.service_seed)
        self.children = [Child("projector", ["projector"], {**service, **where()}),
                         Child("webhooks", ["webhooks"], {**service, **where()})]
        for region in layout.regions if self.regional else [None]:
            suffix = f"-{region}" if region else ""
            self.children += [Child(f"gate{suffix}", ["gate"], {**service, **where(None, region)}),
                              Child(f"verifier{suffix}", ["verifier"],
                                    {**service, **where(None, region)})]
        self.children += [Child(f"worker-{z}", ["worker", "--zone", z, "--model", model_name,
                                                "--node-name", n],
                                {**seed(store.worker_seed(n)), **where(z)})
                          for z, n in node_names.items()]
        if self.embedder:
            self.children.append(Child(self.embedder.child_name, self.embedder.args(), {
                **seed(store.worker_seed(self.embedder.node_name)), **where(self.embedder.zone)}))
        for i, region in enumerate(layout.regions if self.regional else [None]):
            port = str(self.port + i)  # the home region's API on --port, the next on +1, ...
            self.children.append(Child(f"api-{region}" if region else "api",
                                       ["api", "--host", self.host, "--port", port],
                                       {**service, **where(None, region)}))
        env = self._env(url)
        for child in self.children:
            child.start(env, logs)
        return key

    def wait_ready(self, key: str, stopped, timeout: float = 120.0) -> bool:
        """Until every API answers and lists the model, and every worker is live (its
        zone has a live node on the status board); False if stopped."""
        deadline = time.monotonic() + timeout
        waiting: list = [self.port + i for i in range(max(len(self.regional), 1))]
        waiting += [c.name.removeprefix("worker-") for c in self.children
                    if c.name.startswith("worker-")]
        while waiting:
            if stopped():
                return False
            if time.monotonic() > deadline:
                raise RuntimeError(f"the network was not ready within {timeout:.0f} s; see "
                                   f"{self.settings.data_dir / 'logs'}")
            self.check_children()
            try:
                if self._ready(waiting[0], key):
                    waiting.pop(0)
                    continue
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                pass
            time.sleep(0.25)
        return True

    def _ready(self, what: int | str, key: str) -> bool:
        """An API (its port) lists the model; a worker's zone has a live node."""
        if isinstance(what, int):
            request = urllib.request.Request(f"http://{self.host}:{what}/v1/models",
                                             headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(request, timeout=2) as resp:
                served = {m["id"] for m in json.load(resp)["data"]}
                return self.model in served and (not self.embedder or
                                                 self.embedder.model in served)
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/status.json",
                                    timeout=2) as resp:
            return json.load(resp)["zones"].get(what, {}).get("nodes_live", 0) > 0

    def check_children(self) -> None:
        """Restart a child that died (a few times), so one crash does not stop the network."""
        for child in self.children:
            if child.proc and child.proc.poll() is not None and not self.stopping:
                if child.restarts >= 5:
                    raise RuntimeError(f"{child.name} keeps exiting; see logs/{child.name}.log")
                print(f"{child.name} exited ({child.proc.returncode}); restarting", flush=True)
                child.restarts += 1
                child.start(self._env(self.settings.nats_url), self.settings.data_dir / "logs")

    def stop(self) -> None:
        self.stopping = True
        # Workers and APIs first, while the gates they report to answer (a job in
        # flight is reported, not left to its grace), then the services.
        edge = [c.proc for c in self.children if c.proc and c.args[0] in ("worker", "api")]
        for wave in (edge, [c.proc for c in self.children if c.proc and c.proc not in edge]):
            for proc in (p for p in wave if p.poll() is None):
                proc.send_signal(signal.SIGTERM)
            for proc in wave:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.nats is not None:
            self.nats.terminate()
            self.nats.wait(timeout=15)
            (self.settings.data_dir / NATS_URL_FILE).unlink(missing_ok=True)
        if self.own_regions:
            natsserver.stop_regions(self.settings.data_dir)
            (self.settings.data_dir / NATS_URL_FILE).unlink(missing_ok=True)


def curl_line(host: str, port: int, key: str, model: str) -> str:
    body = json.dumps({"model": model, "max_tokens": 24, "temperature": 0, "messages": [
        {"role": "user", "content": "What is the capital of France?"}]})
    return (f"curl -s http://{host}:{port}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' -d '{body}'")


def run(settings: Settings, model: str, host: str, port: int,
        embeddings: str | None = DEFAULT_EMBEDDING_MODEL) -> int:
    net = Network(settings, model, host, port, embeddings=embeddings)
    stop = {"now": False}

    def _signal(*_):
        stop["now"] = True

    signal.signal(signal.SIGINT, _signal)
    signal.signal(signal.SIGTERM, _signal)
    try:
        key = net.start()
        print(f"starting inferbus in {settings.data_dir} (logs in logs/) ...", flush=True)
        if not net.wait_ready(key, lambda: stop["now"]):
            return 130
        apis = ", ".join(f"http://{host}:{port + i}" + (f" ({r})" if net.regional else "")
                         for i, r in enumerate(net.regional or [""]))
        workers = ", ".join(c.name.removeprefix("worker-") for c in net.children
                            if c.name.startswith("worker-"))
        print(f"inferbus is up: API on {apis}, workers in {workers}\n"
              f"demo API key (account {DEMO_ACCOUNT!r}, {DEMO_CREDITS} credits): {key}\n\ntry:\n"
              f"{curl_line(host, port, key, net.model)}\n"
              + (f"{embeddings_curl(host, port, key, net.embedder.model)}\n" if net.embedder
                 else "") + "\nCtrl-C stops everything.", flush=True)
        while not stop["now"]:
            net.check_children()
            time.sleep(0.2)
        return 0
    except RuntimeError as exc:
        print(f"inferbus up: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping ...", flush=True)
        net.stop()
