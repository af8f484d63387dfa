"""Webhooks for async jobs, on a real stack with the dispatcher (``inferbus
webhooks``) and real HTTP receivers on loopback (allowed by
``INFERBUS_WEBHOOK_ALLOW_PRIVATE``).

A receiver that is down at first gets exactly one successful, signed delivery
once it is up; a receiver that hangs does not delay another job's delivery;
a bad URL is refused before anything is held.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from api.webhook_signing import verify
from tests.natsd import free_port
from tests.stack import isolated_stack
from workers.echo import write_echo_model

HANG_S = 20.0  # the dispatcher's attempt timeout here: a hang holds a slot this long


class Receiver:
    """A webhook receiver on loopback: records each POST; ``hang`` makes it never answer."""

    def __init__(self, port: int | None = None, hang: bool = False) -> None:
        self.port, self.hang = port or free_port(), hang
        self.received: list[tuple[float, dict, bytes]] = []
        self.arrivals = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.arrivals += 1
                if owner.hang:
                    time.sleep(HANG_S * 2)
                    return
                owner.received.append((time.monotonic(), dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture(scope="module")
def hook_stack(models_dir, tmp_path_factory):
    env = {"INFERBUS_WEBHOOK_ALLOW_PRIVATE": "1", "INFERBUS_WEBHOOK_RETRY_BASE_S": "0.5",
           "INFERBUS_WEBHOOK_RETRY_MAX_S": "1", "INFERBUS_WEBHOOK_TIMEOUT_S": str(HANG_S)}
    with isolated_stack(tmp_path_factory.mktemp("webhooks"), models_dir, env) as s:
        write_echo_model(s.data_dir / "models" / "echo")
        s.start_worker("eu", "echo", "worker-eu")
        s.start("webhooks", "webhooks")
        s.start_api()
        s.key = s.new_key("hooker", credits="100")
        s.wait_for_model(s.key, "echo")
        yield s


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def submit(s, url: str, text: str = "hello webhook", asynchronous: bool = True) -> httpx.Response:
    headers = {**bearer(s.key), "X-Inferbus-Webhook": url}
    if asynchronous:
        headers["Prefer"] = "respond-async"
    return httpx.post(f"{s.base_url}/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": "echo", "max_tokens": 4,
                            "messages": [{"role": "user", "content": text}]})


def delivery(s, job_id: str) -> dict:
    r = httpx.get(f"{s.base_url}/v1/jobs/{job_id}/webhook", headers=bearer(s.key), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.1)
    raise TimeoutError(what)


def test_a_receiver_down_then_up_gets_exactly_one_signed_delivery(hook_stack):
    s = hook_stack
    receiver = Receiver()  # nothing listens on its port yet: connections are refused
    r = submit(s, receiver.url)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    failed = wait_for(lambda: (d := delivery(s, job_id))["attempts"] >= 2 and d, 30,
                      "no failed attempts recorded")
    assert failed["delivered_at"] is None and failed["last_error"]
    receiver.start()
    try:
        done = wait_for(lambda: (d := delivery(s, job_id))["delivered_at"] and d, 30,
                        "never delivered once the receiver was up")
        time.sleep(3)  # a second delivery would come within a retry pause
        assert len(receiver.received) == 1
        _, headers, body = receiver.received[0]
        secret = httpx.get(f"{s.base_url}/v1/webhooks/secret", headers=bearer(s.key),
                           timeout=10).json()["secret"]
        assert verify(secret, body, headers["X-Inferbus-Signature"])
        assert not verify(secret, body + b" ", headers["X-Inferbus-Signature"])
        assert headers["X-Inferbus-Delivery"] == done["delivery_id"]
        assert headers["X-Inferbus-Event"] == "job.completed"
        job = json.loads(body)
        assert job["id"] == job_id and job["status"] == "completed"
        assert job["result"]["choices"][0]["message"]["content"]
        assert job == httpx.get(f"{s.base_url}/v1/jobs/{job_id}", headers=bearer(s.key),
                                timeout=10).json()
        assert done["attempts"] > failed["attempts"] and done["last_status"] == 204
        assert delivery(s, job_id)["delivered_at"] == done["delivered_at"]
    finally:
        receiver.stop()


def test_a_dispatcher_killed_mid_retry_leaves_the_delivery_to_the_next_one(hook_stack):
    s = hook_stack
    receiver = Receiver()
    r = submit(s, receiver.url, "through a restart")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    wait_for(lambda: delivery(s, job_id)["attempts"] >= 1, 30, "no attempt before the kill")
    s.kill("webhooks")
    receiver.start()
    try:
        s.start("webhooks", "webhooks")
        # The nacked outcome comes back to the new dispatcher at its next retry.
        wait_for(lambda: delivery(s, job_id)["delivered_at"], 60, "never delivered after restart")
        time.sleep(3)
        assert len(receiver.received) == 1
        assert json.loads(receiver.received[0][2])["id"] == job_id
    finally:
        receiver.stop()


def test_a_hanging_receiver_does_not_delay_another_jobs_delivery(hook_stack):
    s = hook_stack
    hanging, healthy = Receiver(hang=True).start(), Receiver().start()
    try:
        stuck = submit(s, hanging.url, "to the hanging one")
        assert stuck.status_code == 202, stuck.text
        wait_for(lambda: hanging.arrivals, 30, "the hanging receiver was never called")
        sent = time.monotonic()
        ok = submit(s, healthy.url, "to the healthy one")
        assert ok.status_code == 202, ok.text
        wait_for(lambda: healthy.received, HANG_S / 2, "the healthy receiver waited on the hang")
        assert healthy.received[0][0] - sent < HANG_S / 2
        assert json.loads(healthy.received[0][2])["id"] == ok.json()["id"]
        assert delivery(s, stuck.json()["id"])["delivered_at"] is None
    finally:
        hanging.stop()
        healthy.stop()


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "not a url", "http:///nohost",
                                 "http://user:pw@127.0.0.1/hook"])
def test_a_bad_webhook_url_is_a_400_naming_the_header(hook_stack, url):
    r = submit(hook_stack, url)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "X-Inferbus-Webhook" and "X-Inferbus-Webhook" in error["message"]


def test_a_webhook_on_a_sync_call_is_a_400_naming_the_header(hook_stack):
    r = submit(hook_stack, Receiver().url, asynchronous=False)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "X-Inferbus-Webhook"


def test_another_accounts_job_webhook_is_not_found(hook_stack):
    s = hook_stack
    r = submit(s, Receiver().url, "whose")
    other = s.new_key("someone-else", credits="1")
    seen = httpx.get(f"{s.base_url}/v1/jobs/{r.json()['id']}/webhook", headers=bearer(other),
                     timeout=10)
    assert seen.status_code == 404
    for job_id in ("no-such-job", "bad*id", "a" * 200):
        seen = httpx.get(f"{s.base_url}/v1/jobs/{job_id}/webhook", headers=bearer(s.key),
                         timeout=10)
        assert seen.status_code == 404, (job_id, seen.text)


def test_a_keys_webhook_receives_its_async_jobs_that_name_none(hook_stack):
    s = hook_stack
    receiver = Receiver().start()
    try:
        made = httpx.post(f"{s.base_url}/v1/keys", headers=bearer(s.key), timeout=10,
                          json={"name": "hooked", "webhook_url": receiver.url})
        assert made.status_code == 200, made.text
        assert made.json()["webhook_url"] == receiver.url
        hooked = made.json()["key"]
        r = httpx.post(f"{s.base_url}/v1/chat/completions", timeout=30,
                       headers={**bearer(hooked), "Prefer": "respond-async"},
                       json={"model": "echo", "max_tokens": 4,
                             "messages": [{"role": "user", "content": "by default"}]})
        assert r.status_code == 202, r.text
        wait_for(lambda: delivery(s, r.json()["id"])["delivered_at"], 30, "never delivered")
        assert json.loads(receiver.received[0][2])["id"] == r.json()["id"]
        sync = httpx.post(f"{s.base_url}/v1/chat/completions", headers=bearer(hooked),
                          timeout=30, json={"model": "echo", "max_tokens": 4,
                                            "messages": [{"role": "user", "content": "now"}]})
        assert sync.status_code == 200, sync.text  # the default is for async calls only
    finally:
        receiver.stop()


def test_a_key_with_a_bad_webhook_url_is_refused_naming_the_field(hook_stack):
    r = httpx.post(f"{hook_stack.base_url}/v1/keys", headers=bearer(hook_stack.key),
                   timeout=10, json={"webhook_url": "ftp://example.com/hook"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "webhook_url"
