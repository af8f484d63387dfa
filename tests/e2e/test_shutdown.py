"""Stopping the network: every service exits soon after SIGTERM, whichever
stopped before it. An operator's ``docker stop``, ``inferbus up``'s Ctrl-C and
every test's teardown send SIGTERM; a service that hangs on it waits out a
timeout and is killed, with whatever it had not flushed."""
from __future__ import annotations

import subprocess

import httpx

from tests.conftest import TINY_MODEL
from tests.natsd import NatsServer
from tests.stack import Stack
from workers.pull_loop import STOP_GRACE_S

# A worker whose gate has gone gives its running job STOP_GRACE_S to be reported
# (a gate restarting comes back), then exits. Far below nats-py's 30 s drain
# timeout, which a subscription left open at shutdown (a consumer task cancelled
# but not awaited) makes a process wait out.
STOP_S = STOP_GRACE_S + 7.0
ORDER = ("gate", "verifier", "projector", "worker-eu", "api")  # the gate first, as a teardown does


def test_every_service_exits_soon_after_sigterm_after_the_gate_has_gone(tmp_path, models_dir):
    server = NatsServer(tmp_path / "nats").start()
    stack = Stack(tmp_path / "data", server.url)
    try:
        stack.data_dir.mkdir()
        subprocess.run(["cp", "-r", str(models_dir), str(stack.data_dir / "models")], check=True)
        stack.start_projector()
        stack.start_worker("eu", TINY_MODEL)
        stack.start_api()
        key = stack.new_key("sam", credits="1000")
        stack.wait_for_model(key, TINY_MODEL)
        for _ in range(3):  # every consumer has had work, and fetches are in flight
            r = httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=60,
                           headers={"Authorization": f"Bearer {key}"},
                           json={"model": TINY_MODEL, "max_tokens": 2,
                                 "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
        hung = []
        for name in ORDER:
            proc = stack.procs.pop(name)
            proc.terminate()
            try:
                proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                hung.append(name)
        assert not hung, f"{hung} still ran {STOP_S:.0f} s after SIGTERM"
    finally:
        stack.stop()
        server.stop()
