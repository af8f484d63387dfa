"""The public status board on a real stack: two eu workers and one na worker.

The stack has a NATS server of its own (live nodes are counted from the
``nodes`` bucket, which other stacks would share) and serves a few jobs
before the tests look: three in eu, two in na and one from sea, a zone with
no node, which falls back to the global queue.
"""
from __future__ import annotations

import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_MODEL
from tests.stack import Stack, isolated_stack

CHROMIUM = Path("/usr/bin/chromium")
ZONES = ["eu", "eu", "eu", "na", "na", "sea"]


@pytest.fixture(scope="module")
def busy_stack(models_dir, tmp_path_factory):
    with isolated_stack(tmp_path_factory.mktemp("status"), models_dir) as s:
        s.start_worker("eu", TINY_MODEL, "worker-eu-1")
        s.start_worker("eu", TINY_MODEL, "worker-eu-2")
        s.start_worker("na", TINY_MODEL)
        s.start_api()
        key = s.new_key("status")
        s.wait_for_model(key, TINY_MODEL, zones=2)
        wait_for_status(s, lambda d: d["totals"]["nodes_live"] == 3)
        for zone in ZONES:
            r = httpx.post(f"{s.base_url}/v1/chat/completions", timeout=30,
                           json={"model": TINY_MODEL, "max_tokens": 2,
                                 "messages": [{"role": "user", "content": "hi"}]},
                           headers={"Authorization": f"Bearer {key}", "X-Inferbus-Zone": zone})
            assert r.status_code == 200, r.text
        yield s


def wait_for_status(s: Stack, ready, timeout: float = 30.0) -> dict:
    """The first /status.json body for which ``ready(body)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(f"{s.base_url}/status.json", timeout=5).json()
        if ready(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_status_json_counts_live_nodes_and_recent_jobs_per_zone(busy_stack):
    # The projector applies the jobs' events shortly after the replies.
    body = wait_for_status(busy_stack, lambda d: d["totals"]["completed"] >= len(ZONES))
    zones = body["zones"]
    assert (zones["eu"]["nodes_live"], zones["na"]["nodes_live"]) == (2, 1)
    assert body["totals"]["nodes_live"] == 3 and body["totals"]["completed"] == len(ZONES)
    assert zones["eu"]["completed"] >= 1 and zones["eu"]["jobs_per_min"] > 0
    assert zones["eu"]["p50_ms"] is not None and zones["eu"]["models"] == [TINY_MODEL]
    assert zones["sea"]["nodes_live"] == 0 and zones["sea"]["fallback_rate"] == 1.0
    assert all(len(n["node_id"]) == 12 for n in zones["eu"]["nodes"])

    metrics = httpx.get(f"{busy_stack.base_url}/metrics", timeout=5).text
    assert 'inferbus_nodes_live{zone="eu"} 2' in metrics.splitlines()


class ZoneCounts(HTMLParser):
    """``data-zone`` of each zone card -> the text of its ``nodes-live`` element."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, str] = {}
        self._zone: str | None = None
        self._in_count = False

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        if "data-zone" in attrs:
            self._zone = attrs["data-zone"]
        self._in_count = "nodes-live" in (attrs.get("class") or "").split()

    def handle_data(self, data) -> None:
        if self._in_count and self._zone and self._zone not in self.counts:
            self.counts[self._zone] = data.strip()


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason=f"{CHROMIUM} is absent: install the Debian package 'chromium'")
def test_status_page_shows_node_counts_per_zone_in_a_browser(busy_stack, tmp_path):
    out = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", f"{busy_stack.base_url}/status"],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    parser = ZoneCounts()
    parser.feed(out.stdout)
    # Rendered by the page's script from /status.json, not present in the HTML served.
    assert parser.counts.get("eu") == "2" and parser.counts.get("na") == "1", out.stdout[-3000:]
    assert 'id="total-nodes">3<' in out.stdout
