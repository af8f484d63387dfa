"""inferbus beside a peer gateway, LiteLLM's proxy, driven by one client in one run.

    .venv/bin/python -m bench.peers [--rounds 2] [--n 300] [--seconds 10] [--inflight 64]

Both answer the same sync 1-token chat (``max_tokens: 1``), sent by the same
lean client (``bench.httpload``), in alternating rounds (inferbus, LiteLLM,
inferbus, ...) so that whatever else the shared machine does hits both alike.
Each round times ``--n`` requests at 1 in flight (p50/p99) and then
``--inflight`` clients back to back for ``--seconds`` (requests/s). Each side is
warmed up at both loads before the first round.

- inferbus is bench.bus's stack (``bench.bus.echo_network``/``serve_echo``): API,
  projector, an echo-engine worker, the ledger reserving and settlement charging
  every job. After each load round the bench waits until the account holds
  nothing, so inferbus's trailing settlement is not charged to LiteLLM's round;
  at the end ``inferbus audit`` replays the log.
- LiteLLM's proxy (``litellm[proxy]``, pinned by ``--litellm-version``) is
  installed by the bench into a virtualenv of its own under
  ~/.cache/inferbus/bench, and runs with one model whose ``mock_response`` is a
  one-token answer, a master key (so it checks a key as inferbus does), no
  database and ``--num_workers`` = the machine's cores. ``mock_response`` means
  no model and no upstream call: what is timed is the gateway's own cost, as the
  echo engine does for inferbus.

Targets: inferbus p50 <= 0.5x LiteLLM's, p99 <= 1.0x, requests/s >= 2x. Prints
a table and writes bench/results/peers.json.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench import httpload
from bench.bus import (BODY, PATH, WARMUP, echo_network, latency, serve_echo, until_audited,
                       until_settled)
from bench.report import save
from tests.natsd import free_port

VENV = Path.home() / ".cache" / "inferbus" / "bench" / "litellm-venv"
MASTER_KEY = "sk-inferbus-bench"
TARGETS = {"ratio_p50": 0.5, "ratio_p99": 1.0, "ratio_throughput": 2.0}


def litellm_binary(version: str) -> tuple[Path, str]:
    """The proxy's command in the bench's own venv, installing ``litellm[proxy]``
    there first unless it already has ``version``; and the version installed."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    ask = [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"]
    installed = subprocess.run(ask, capture_output=True, text=True).stdout.strip()
    if installed != version:
        print(f"installing litellm[proxy]=={version} into {VENV}", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={version}"],
                       check=True)
        installed = subprocess.run(ask, capture_output=True, text=True, check=True).stdout.strip()
    return VENV / "bin" / "litellm", installed


@contextlib.contextmanager
def litellm_proxy(binary: Path, workdir: Path, workers: int):
    """The proxy's base URL once it answers a chat; stopped, workers too, on exit."""
    config = {"model_list": [{"model_name": BODY["model"], "litellm_params": {
        "model": f"openai/{BODY['model']}", "api_key": "unused", "mock_response": "hi"}}],
        "general_settings": {"master_key": MASTER_KEY}}
    path = workdir / "litellm.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML: no yaml writer needed
    # No DATABASE_URL: the proxy runs without a database. The machine may be offline,
    # and the proxy would retry fetching its price list at every start.
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    port = free_port()
    log = workdir / "litellm.log"
    # A session of its own, so stopping it reaches uvicorn's worker processes too.
    proc = subprocess.Popen([str(binary), "--config", str(path), "--host", "127.0.0.1",
                             "--port", str(port), "--num_workers", str(workers)],
                            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"LiteLLM proxy did not answer (exit {proc.poll()}):\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.post(url + PATH, json=BODY, timeout=5, headers={
                        "Authorization": f"Bearer {MASTER_KEY}"}).status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Side:
    """One gateway under test: where to send, and what to do after a load."""

    def __init__(self, name: str, url: str, key: str, settle=None) -> None:
        self.name, self.url, self.settle = name, url, settle
        self.headers = {"Authorization": f"Bearer {key}"}
        self.samples: list[float] = []
        self.loads: list[dict] = []

    def load(self, inflight: int, seconds: float) -> dict:
        result = asyncio.run(httpload.closed_loop(self.url, PATH, BODY, self.headers, inflight,
                                                  seconds))
        if self.settle:
            result["settled_after_s"], result["held_after"] = self.settle()
        return result

    def round(self, n: int, inflight: int, seconds: float) -> None:
        self.samples += asyncio.run(httpload.latencies(self.url, PATH, BODY, self.headers, n,
                                                       WARMUP))
        self.loads.append(self.load(inflight, seconds))

    def summary(self) -> dict:
        jobs = sum(r["jobs"] for r in self.loads)
        failed: dict[str, int] = {}
        for r in self.loads:
            for status, count in r["failed"].items():
                failed[str(status)] = failed.get(str(status), 0) + count
        return {"latency": latency(self.samples), "rounds": self.loads, "jobs": jobs,
                "failed": failed,
                "requests_per_s": jobs / sum(r["seconds"] for r in self.loads)}


def run(rounds: int, n: int, seconds: float, inflight: int, version: str) -> dict:
    binary, installed = litellm_binary(version)
    workers = os.cpu_count() or 1
    with echo_network(inflight) as (_, stack):
        key = serve_echo(stack)

        def settle() -> tuple[float, str]:
            lag_s, account = until_settled(stack, key)
            return lag_s, account["held"]
        with litellm_proxy(binary, stack.data_dir, workers) as litellm_url:
            sides = [Side("inferbus", stack.base_url, key, settle),
                     Side("litellm", litellm_url, MASTER_KEY)]
            for side in sides:  # warm-up: both loads, nothing kept
                side.load(inflight, min(seconds, 3.0))
            for i in range(rounds):
                for side in sides:
                    print(f"round {i + 1}/{rounds}: {side.name}", flush=True)
                    side.round(n, inflight, seconds)
        audit_after_s, audit = until_audited(stack)
    ours, theirs = (side.summary() for side in sides)
    return {"litellm_version": installed, "litellm_workers": workers, "rounds": rounds,
            "inflight": inflight, "inferbus": ours, "litellm": theirs,
            "audit_exit": audit.returncode, "audit_after_s": audit_after_s,
            "ratio_p50": ours["latency"]["p50_ms"] / theirs["latency"]["p50_ms"],
            "ratio_p99": ours["latency"]["p99_ms"] / theirs["latency"]["p99_ms"],
            "ratio_throughput": ours["requests_per_s"] / theirs["requests_per_s"]}


def report(result: dict) -> None:
    ours, theirs = result["inferbus"], result["litellm"]
    print(f"\n{result['rounds']} rounds each, LiteLLM {result['litellm_version']} "
          f"(mock_response, no database, {result['litellm_workers']} workers)")
    print(f"{'':<26}{'inferbus':>12}{'litellm':>12}{'ratio':>9}  target")
    rows = [("1 in flight p50 ms", "p50_ms", "ratio_p50", "<= 0.5"),
            ("1 in flight p99 ms", "p99_ms", "ratio_p99", "<= 1.0")]
    for label, field, ratio, goal in rows:
        met = "met" if result[ratio] <= TARGETS[ratio] else "missed"
        print(f"{label:<26}{ours['latency'][field]:>12.2f}{theirs['latency'][field]:>12.2f}"
              f"{result[ratio]:>8.2f}x  {goal}: {met}")
    met = "met" if result["ratio_throughput"] >= TARGETS["ratio_throughput"] else "missed"
    print(f"{str(result['inflight']) + ' in flight requests/s':<26}"
          f"{ours['requests_per_s']:>12.0f}{theirs['requests_per_s']:>12.0f}"
          f"{result['ratio_throughput']:>8.2f}x  >= 2.0: {met}")
    settled = max(r["settled_after_s"] for r in ours["rounds"])
    print(f"failed: inferbus {ours['failed'] or 'none'}, litellm {theirs['failed'] or 'none'}; "
          f"inferbus settled at most {settled:.1f} s after a load, held after: "
          f"{ours['rounds'][-1]['held_after']}; audit exit {result['audit_exit']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each, alternating")
    parser.add_argument("--n", type=int, default=300, help="requests at 1 in flight, per round")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load")
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--litellm-version", default="1.108.7")
    args = parser.parse_args()
    result = run(args.rounds, args.n, args.seconds, args.inflight, args.litellm_version)
    report(result)
    save("peers", result)


if __name__ == "__main__":
    main()
