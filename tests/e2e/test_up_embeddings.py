"""``inferbus up`` serves embeddings out of the box: its embeddings worker
fetches all-MiniLM-L6-v2 by its published root, the gate counts with that
root's tokenizer, and the printed curl line works."""
import json
import shlex
import shutil
import subprocess

from tests.e2e.test_up import ctrl_c, start_up
from tests.natsd import free_port


def test_up_prints_an_embeddings_curl_line_that_works(tmp_path, models_dir):
    data_dir = tmp_path / "inferbus"
    shutil.copytree(models_dir, data_dir / "models")
    proc, lines = start_up(data_dir, free_port())
    try:
        assert any(line.startswith("model all-minilm-l6-v2: root ") for line in lines), lines
        curl = next(line for line in lines if line.startswith("curl ") and "/v1/embeddings" in line)
        out = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=60)
        body = json.loads(out.stdout)
        assert len(body["data"][0]["embedding"]) == 384, out.stdout[:500]
        assert body["usage"]["prompt_tokens"] == 4
    finally:
        ctrl_c(proc)
