"""``inferbus up``: one command brings the network up, Ctrl-C takes it down,
and a second run keeps the first run's jobs."""
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import TINY_MODEL
from tests.natsd import free_port


def processes_using(data_dir: Path) -> list[int]:
    """PIDs whose environment or command line names ``data_dir`` (Linux /proc)."""
    marker = str(data_dir).encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            blob = Path(f"/proc/{pid}/environ").read_bytes() + Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in blob and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def start_up(data_dir: Path, port: int, *more: str) -> tuple[subprocess.Popen, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERBUS_")}
    env.update(INFERBUS_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "up", "--model", TINY_MODEL,
                             "--port", str(port), *more], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Ctrl-C"):
            return proc, lines
    proc.kill()
    raise AssertionError("inferbus up did not come up:\n" + "\n".join(lines))


def ctrl_c(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0


def test_up_serves_the_printed_curl_line_and_stops_cleanly(tmp_path, models_dir):
    data_dir = tmp_path / "inferbus"
    shutil.copytree(models_dir, data_dir / "models")
    port = free_port()
    proc, lines = start_up(data_dir, port)
    try:
        curl = next(line for line in lines if line.startswith("curl "))
        key = next(line.split()[-1] for line in lines if line.startswith("demo API key"))
        out = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=60)
        body = httpx.Response(200, content=out.stdout).json()
        assert body["object"] == "chat.completion", out.stdout
        job_id = body["id"].removeprefix("chatcmpl-")
    finally:
        ctrl_c(proc)
    time.sleep(0.5)
    assert processes_using(data_dir) == [], "children outlived Ctrl-C"

    proc, lines = start_up(data_dir, port)  # the same data dir: the same key and jobs
    try:
        assert any(key in line for line in lines)
        job = httpx.get(f"http://127.0.0.1:{port}/v1/jobs/{job_id}",
                        headers={"Authorization": f"Bearer {key}"}).json()
        assert job["status"] == "completed" and job["result"]["id"] == body["id"]
    finally:
        ctrl_c(proc)


def test_up_with_regions_runs_a_supercluster_with_an_api_per_region(tmp_path, models_dir):
    data_dir = tmp_path / "inferbus"
    shutil.copytree(models_dir, data_dir / "models")
    port = free_port()
    proc, lines = start_up(data_dir, port, "--regions", "eu,na")
    try:
        assert any(f":{port} (eu)" in line and f":{port + 1} (na)" in line for line in lines)
        key = next(line.split()[-1] for line in lines if line.startswith("demo API key"))
        for api, region in ((port, "eu"), (port + 1, "na")):
            r = httpx.post(f"http://127.0.0.1:{api}/v1/chat/completions", timeout=60,
                           headers={"Authorization": f"Bearer {key}", "X-Inferbus-Zone": region},
                           json={"model": TINY_MODEL, "max_tokens": 2,
                                 "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            assert (r.headers["x-inferbus-region"], r.headers["x-inferbus-zone"]) == (region, region)
        assert len(list(data_dir.glob("nats-server-*.pid"))) == 2  # one server per region
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("INFERBUS_")},
               "INFERBUS_DATA_DIR": str(data_dir)}
        audit = subprocess.run([sys.executable, "-m", "cli", "audit"], env=env, timeout=120,
                               capture_output=True, text=True)  # the data dir knows its regions
        assert audit.returncode == 0, audit.stdout + audit.stderr
    finally:
        ctrl_c(proc)
    time.sleep(0.5)
    assert processes_using(data_dir) == [], "children outlived Ctrl-C"


def test_up_on_a_busy_port_says_so_in_one_line(tmp_path, models_dir):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERBUS_")}
        env["INFERBUS_DATA_DIR"] = str(tmp_path)
        out = subprocess.run([sys.executable, "-m", "cli", "up", "--model", TINY_MODEL,
                              "--port", str(port)], env=env, capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 1
    assert f"{port} is in use" in out.stderr and len(out.stderr.strip().splitlines()) == 1
