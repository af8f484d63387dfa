"""The network as the field measures it: guidellm, the vLLM project's load client, against a
whole ``inferbus up`` serving SmolLM2-135M, beside the worker engine's own
tokens/s at the same stream counts, measured in the same run.

    .venv/bin/python -m bench.clients [--streams 1,8,32] [--seconds 120]
                                      [--prompt-tokens 64] [--output-tokens 64]

guidellm (pinned, ``GUIDELLM``) is installed from PyPI into a virtualenv of its
own, ``~/.cache/inferbus/bench/guidellm-venv``, once. It runs its ``concurrent``
profile (N streams, each sending its next request when the last one ends) on
synthetic prompts for ``--seconds`` per stream count, streaming chat
completions with ``ignore_eos``, so every request asks for exactly
``--output-tokens``. Its tokenizer is the local SmolLM2 directory, with the
hub switched off. The table shows its TTFT p50/p99 and ITL p50 over completed
requests, and its output tokens/s over all requests (the ones cut off at the
end of a window too).

The stack is ``inferbus up --embeddings none`` in a temp data dir on a free
port: NATS, the API, the gate, the verifier, the projector and its two
workers (zones eu and na), which share this machine's cores. The worker's own
number is bench.worker's: ``Batcher.stream_async`` with N concurrent streams of
``--output-tokens`` tokens in this process, median of ``--rounds``, measured
before the stack starts so nothing else competes for the CPU. The ratio
guidellm/worker is what the whole network (HTTP, SSE, the bus, the gate,
billing, two workers on one machine) keeps of the engine's throughput.
Writes bench/results/clients.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import venv
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import torch

from bench.report import save
from bench.worker import worker_streams
from bus.config import Settings
from tests.natsd import free_port
from workers.batching import Batcher
from workers.engine import Engine
from workers.models import DEFAULT_MODEL, pull

GUIDELLM = "0.8.1"
VENV = Path.home() / ".cache/inferbus/bench/guidellm-venv"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # no hub: the tokenizer is local


def guidellm() -> Path:
    """The pinned guidellm's executable, installed on first use; exits with one line if
    it cannot be installed."""
    exe, python = VENV / "bin/guidellm", VENV / "bin/python"
    check = [str(python), "-c", "import importlib.metadata as m; print(m.version('guidellm'))"]
    if exe.exists() and subprocess.run(check, capture_output=True, text=True).stdout.strip() \
            == GUIDELLM:
        return exe
    print(f"installing guidellm=={GUIDELLM} into {VENV} (once) ...", flush=True)
    shutil.rmtree(VENV, ignore_errors=True)
    venv.create(VENV, with_pip=True)
    log = VENV.parent / "guidellm-install.log"
    log.write_text("")
    # Torch first, pinned to ours: guidellm's bare ``torch`` would pull the multi-GB
    # CUDA build (scripts/setup pins it for the same reason).
    for requirement in (f"torch=={torch.__version__.split('+')[0]}", f"guidellm=={GUIDELLM}"):
        with open(log, "a") as out:
            code = subprocess.call([str(python), "-m", "pip", "install", "-q", requirement],
                                   stdout=out, stderr=subprocess.STDOUT)
        if code != 0:
            shutil.rmtree(VENV, ignore_errors=True)  # a half-made venv is retried whole
            sys.exit(f"bench.clients: cannot install {requirement} (pip exit {code}; see {log})")
    return exe


def engine_tok_s(model: Path, streams: list[int], tokens: int, rounds: int) -> dict[int, float]:
    """bench.worker's worker tokens/s at each stream count: median of ``rounds``, after
    one untimed round (first-call allocations, batch shapes)."""
    engine = Engine.load(model)
    engine.eos_token_ids = frozenset()  # every stream makes exactly ``tokens``, as guidellm asks
    batcher = Batcher(engine, max_batch=max(32, *streams))
    loop = asyncio.new_event_loop()
    samples: dict[int, list[float]] = {n: [] for n in streams}
    try:
        for round_ in range(1 + rounds):
            for n in streams:
                tok_s = loop.run_until_complete(worker_streams(batcher, n, tokens))
                if round_:
                    samples[n].append(tok_s)
                print(f"  worker {n} streams: {tok_s:.1f} tok/s{'' if round_ else ' (warm-up)'}",
                      flush=True)
    finally:
        batcher.close()
        loop.close()
    return {n: statistics.median(s) for n, s in samples.items()}


@contextmanager
def inferbus_up(model: Path, data_dir: Path) -> Iterator[tuple[str, str]]:
    """(base URL, demo key) of ``inferbus up`` running in ``data_dir``; Ctrl-C on exit."""
    port = free_port()
    # Only our data dir: an INFERBUS_ variable of the caller's would point elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERBUS_")}
    env.update(INFERBUS_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "cli", "up", "--model", str(model), "--embeddings", "none",
           "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        lines = []
        for line in proc.stdout:  # up prints the key, then "Ctrl-C stops everything."
            lines.append(line.rstrip())
            if line.startswith("Ctrl-C"):
                break
        else:
            raise SystemExit("bench.clients: inferbus up did not come up:\n" + "\n".join(lines))
        key = next(x.split()[-1] for x in lines if x.startswith("demo API key"))
        # The demo account's 100 credits run out within a few hundred requests.
        subprocess.run([sys.executable, "-m", "cli", "credits", "deposit", "--account", "demo",
                        "100000"], env=env, check=True, capture_output=True)
        yield f"http://127.0.0.1:{port}", key
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def warm_up(url: str, key: str, n: int = 8) -> None:
    """``n`` short requests at once, so both workers have made their first batches before
    guidellm's first window (the engine had its untimed round too)."""
    body = {"model": DEFAULT_MODEL, "max_tokens": 8,
            "messages": [{"role": "user", "content": "Say hello."}]}

    def one(_: int) -> None:
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120,
                   headers={"Authorization": f"Bearer {key}"}).raise_for_status()

    # One alone first: the gate loads the model's tokenizer on the first result, and
    # concurrent first results race in that load (transformers' lazy import) and 500.
    one(0)
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))


def run_guidellm(exe: Path, url: str, key: str, model: Path, args, work: Path) -> dict:
    """guidellm's JSON report of one run over every stream count."""
    report, log = work / "guidellm.json", work / "guidellm.log"
    spec = {
        "backend": {"kind": "openai_http", "target": url, "api_key": key, "model": DEFAULT_MODEL},
        "profile": {"kind": "concurrent", "streams": args.streams},
        "constraint": {"kind": "max_duration", "seconds": args.seconds},
        "data": {"kind": "synthetic_text", "prompt_tokens": args.prompt_tokens,
                 "output_tokens": args.output_tokens},
        "tokenizer": {"kind": "huggingface_auto", "model": str(model)},
        "output": {"kind": "json", "path": str(report)},
    }
    cmd = [str(exe), "run", *(x for k, v in spec.items() for x in (f"--{k}", json.dumps(v))),
           "--disable-progress"]
    with open(log, "w") as out:
        code = subprocess.call(cmd, cwd=work, env={**os.environ, **OFFLINE}, stdout=out,
                               stderr=subprocess.STDOUT)
    if code != 0 or not report.exists():
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{tail}\nbench.clients: guidellm exited {code} (log: {log})")
    return json.loads(report.read_text())


def summarize(benchmark: dict) -> dict:
    """One stream count's numbers from guidellm's report (its own field names)."""
    m = benchmark["metrics"]
    ttft, itl = m["time_to_first_token_ms"]["successful"], m["inter_token_latency_ms"]["successful"]

    def pct(dist: dict, q: str) -> float:  # a window in which nothing completed has none
        return dist["percentiles"][q] if dist["count"] else float("nan")

    return {"streams": benchmark["config"]["strategy"]["streams"],
            "ttft_p50_ms": pct(ttft, "p50"), "ttft_p99_ms": pct(ttft, "p99"),
            "itl_p50_ms": pct(itl, "p50"),
            # Over all requests: tokens the network made for requests cut off at the end
            # of the window were made all the same.
            "output_tok_s": m["output_tokens_per_second"]["total"]["mean"],
            "completed": m["request_totals"]["successful"],
            "incomplete": m["request_totals"]["incomplete"],
            "errored": m["request_totals"]["errored"],
            "duration_s": benchmark["duration"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=120, help="guidellm's window per count")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="worker rounds (median)")
    args = parser.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    exe = guidellm()  # first: a failed install costs nothing else
    model = pull(DEFAULT_MODEL, Settings().models_dir, progress=False)
    print(f"worker engine ({model.name}, {torch.get_num_threads()} threads), "
          f"{args.output_tokens} tokens per stream:", flush=True)
    worker = engine_tok_s(model, args.streams, args.output_tokens, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="bench-clients-"))
    print(f"inferbus up in {work}; guidellm {GUIDELLM}, {args.seconds:.0f} s per stream count",
          flush=True)
    try:
        with inferbus_up(model, work / "inferbus") as (url, key):
            warm_up(url, key)
            report = run_guidellm(exe, url, key, model, args, work)
    finally:  # the stack's store holds a copy of the weights; its logs and guidellm's stay
        if (work / "inferbus/logs").is_dir():
            shutil.move(work / "inferbus/logs", work / "logs")
        shutil.rmtree(work / "inferbus", ignore_errors=True)
    rows = [summarize(b) for b in report["benchmarks"]]
    for row in rows:
        row["worker_tok_s"] = worker[row["streams"]]
        row["ratio"] = row["output_tok_s"] / row["worker_tok_s"]
    print(f"\nguidellm {GUIDELLM} against inferbus up ({model.name}, 2 workers, CPU), "
          f"{args.prompt_tokens} prompt + {args.output_tokens} output tokens, "
          f"{args.seconds:.0f} s per row")
    print(f"{'streams':>7} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'ITL p50 ms':>11} "
          f"{'out tok/s':>10} {'completed':>10} {'worker tok/s':>13} {'guidellm/worker':>16}")
    for r in rows:
        print(f"{r['streams']:>7} {r['ttft_p50_ms']:>12.0f} {r['ttft_p99_ms']:>12.0f} "
              f"{r['itl_p50_ms']:>11.1f} {r['output_tok_s']:>10.1f} {r['completed']:>10} "
              f"{r['worker_tok_s']:>13.1f} {r['ratio']:>15.2f}x")
    failed = sum(r["errored"] for r in rows)
    if failed:
        print(f"{failed} requests errored (guidellm log: {work / 'guidellm.log'})")
    result = {"guidellm": GUIDELLM, "model": model.name, "args": vars(args), "rows": rows,
              "guidellm_report": str(work / "guidellm.json")}
    print(f"wrote {save('clients', result)}")


if __name__ == "__main__":
    main()
