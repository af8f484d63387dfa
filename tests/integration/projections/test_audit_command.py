"""``inferbus audit`` as an operator runs it, on a real nats-server: each
passing audit leaves a checkpoint in the data dir and the next resumes from
it; a checkpoint that does not check out stops the audit with one line on
stderr and exit code 1, and ``--full`` replays everything and replaces it."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import pytest

from bus.config import Settings
from bus.signing import load_or_create_key
from bus.streams import ensure_streams
from cli.main import main
from projections.readmodels import open_store
from tests.histories import credit_history
from tests.integration.projections.test_audit import publish
from tests.integration.projecting import project


@pytest.fixture
def data_dir(fresh_nats, tmp_path: Path, monkeypatch) -> Path:
    """A data dir whose read model holds a logged history, and the environment
    that points ``inferbus`` at it and at the test's server."""
    data = tmp_path / "data"
    monkeypatch.setenv("INFERBUS_NATS_URL", fresh_nats.url)
    monkeypatch.setenv("INFERBUS_DATA_DIR", str(data))
    keys = [load_or_create_key(tmp_path / f"node-{i}.key") for i in range(2)]
    history = credit_history(5, jobs=30, accounts=4, nodes=keys)

    async def log_and_project() -> None:
        nc = await nats.connect(fresh_nats.url)
        js = nc.jetstream()
        await ensure_streams(js)
        store = open_store(Settings())
        try:
            await project(store, js, await publish(js, history.events))
        finally:
            store.close()
            await nc.close()

    asyncio.run(log_and_project())
    return data


def audit(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["audit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_each_passing_audit_leaves_a_checkpoint_the_next_resumes_from(data_dir, capsys) -> None:
    code, out, _ = audit(capsys)
    assert code == 0 and "checkpoint: no checkpoint yet: replayed from the first event" in out
    assert (data_dir / "audit" / "checkpoint.json").exists()
    assert (data_dir / "audit" / "auditor.key").stat().st_mode & 0o077 == 0

    code, out, _ = audit(capsys)

    assert code == 0 and out.startswith("audit: 0 events replayed"), out
    assert "checkpoint: resumed after sequence" in out and "OK: I1" in out


def test_a_refused_checkpoint_is_one_line_and_exit_code_1_until_a_full_replay(
        data_dir, capsys) -> None:
    assert audit(capsys)[0] == 0
    manifest_path = data_dir / "audit" / "checkpoint.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["body"]["rebuilt"]["seq"] = 1
    manifest_path.write_text(json.dumps(manifest))

    code, out, err = audit(capsys)

    assert (code, out) == (1, "")
    assert err.startswith("inferbus audit: checkpoint refused: bad signature on ")
    assert err.count("\n") == 1 and "`inferbus audit --full`" in err, err
    code, out, _ = audit(capsys, "--full")
    assert code == 0 and "checkpoint: not used (a full replay); a new one at" in out, out
    assert audit(capsys)[0] == 0
