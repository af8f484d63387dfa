"""The real default model, pulled from PyPI and served through the whole stack."""
import openai
import pytest

from tests.natsd import NatsServer
from tests.stack import Stack

MODEL = "smollm2-135m-instruct"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_stack(tmp_path_factory):
    # A network of its own: one NATS server is one network (its gates share the work).
    tmp = tmp_path_factory.mktemp("smol")
    server = NatsServer(tmp / "nats").start()
    s = Stack(tmp, server.url)
    pulled = s.cli("models", "pull", MODEL)
    assert pulled.returncode == 0, pulled.stderr
    assert MODEL in s.cli("models", "list").stdout
    s.start_projector()
    s.start_worker("oc", MODEL)
    s.start_api()
    try:
        s.key = s.new_key("smol")
        s.wait_for_model(s.key, MODEL, timeout=180)
        yield s
    finally:
        s.stop()
        server.stop()


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
