"""schemathesis against the running API's own OpenAPI spec: no input makes it
answer 5xx. Bounded: a few examples per operation, on a stack of its own."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL
from tests.stack import isolated_stack

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.fixture(scope="module")
def fuzz_stack(models_dir, tmp_path_factory):
    with isolated_stack(tmp_path_factory.mktemp("fuzz"), models_dir) as s:
        s.start_worker("eu", TINY_MODEL)
        s.start_api()
        s.key = s.new_key("fuzzer", credits="1000")
        s.wait_for_model(s.key, TINY_MODEL)
        yield s


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed")
def test_no_generated_request_gets_a_server_error(fuzz_stack):
    out = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{fuzz_stack.base_url}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "8", "--seed", "1",
         "--request-timeout", "20", "-H", f"Authorization: Bearer {fuzz_stack.key}"],
        capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
