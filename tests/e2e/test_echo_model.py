"""A node serving the echo model (``workers.echo``) takes the whole real path: a
burst of concurrent requests through one worker with room for them all, each
answer its own prompt, every job billed exactly its usage, and the audit clean."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest

from bus.events import Usage
from bus.credits import credits
from bus.pricing import Pricing
from tests.stack import isolated_stack
from workers.echo import write_echo_model

REQUESTS, IN_FLIGHT = 40, 16


@pytest.fixture(scope="module")
def echo_stack(models_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("echo")
    with isolated_stack(tmp, models_dir, {"INFERBUS_MAX_BATCH": str(IN_FLIGHT)}) as s:
        write_echo_model(s.data_dir / "models" / "echo")
        s.start_worker("eu", "echo", "worker-eu")
        s.start_api()
        s.key = s.new_key("echoer", credits="100")
        s.wait_for_model(s.key, "echo")
        yield s


def test_concurrent_echo_jobs_each_get_their_own_words_and_are_billed_their_usage(echo_stack):
    s = echo_stack
    headers = {"Authorization": f"Bearer {s.key}"}

    def ask(i: int) -> dict:
        body = {"model": "echo", "max_tokens": 3,
                "messages": [{"role": "user", "content": f"job {i} says hello world"}]}
        r = httpx.post(f"{s.base_url}/v1/chat/completions", json=body, headers=headers,
                       timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        answers = list(pool.map(ask, range(REQUESTS)))
    assert [a["choices"][0]["message"]["content"] for a in answers] == \
        [f"job {i} says" for i in range(REQUESTS)]
    assert all(a["choices"][0]["finish_reason"] == "length" for a in answers)
    usage = Usage(prompt_tokens=5, completion_tokens=3)
    assert all(a["usage"]["prompt_tokens"] == 5 for a in answers)

    account = s.settled_account(s.key)
    expected = REQUESTS * Decimal(str(credits(Pricing().cost("echo", usage))))
    assert Decimal(str(account["spent"])) == expected
    assert Decimal(str(account["balance"])) == Decimal(100) - expected
    assert s.cli("audit", check=False).returncode == 0
