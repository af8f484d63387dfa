"""The production shape on loopback: three regions of three servers each, every
stream replicated three times across a region's availability zones. A
strict-EU job's content is on all three EU servers and on no other. Slow:
nine servers and a dozen processes on two cores, so it runs by hand
(``INFERBUS_RUN_3X3=1``), not in the suite."""
from __future__ import annotations

import uuid

import httpx
import pytest

from tests.by_hand import THREE_BY_THREE
from tests.regions_stack import start_regions, stop_regions, strict_eu_key

pytestmark = THREE_BY_THREE
REGIONS = "na=na,sa;eu=eu,me,af;ap=sea,ea,oc,sa_asia"


@pytest.fixture(scope="module")
def three_by_three(tmp_path_factory, models_dir):
    stack = start_regions(tmp_path_factory.mktemp("3x3"), models_dir, REGIONS,
                          servers_per_region=3, env={"INFERBUS_STREAM_REPLICAS": "3"})
    try:
        stack.eu_key = strict_eu_key(stack)
        yield stack
    finally:
        stop_regions(stack)


def test_a_strict_eu_job_is_replicated_on_the_three_eu_servers_and_nowhere_else(three_by_three):
    marker = f"marker-{uuid.uuid4().hex}"
    r = httpx.post(f"{three_by_three.apis['eu']}/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {three_by_three.eu_key}"},
                   json={"model": "echo", "max_tokens": 16,
                         "messages": [{"role": "user", "content": f"keep {marker}"}]})
    assert r.status_code == 200 and r.headers["x-inferbus-region"] == "eu", r.text
    found = three_by_three.cluster.find(marker.encode())
    assert {server for server, files in found.items() if files} == {"eu-1", "eu-2", "eu-3"}
    audit = three_by_three.cli("audit", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
