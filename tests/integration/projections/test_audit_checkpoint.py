"""``inferbus audit`` from a checkpoint, on a real nats-server: an audit that
passed leaves a signed checkpoint, the next one replays only the events after
it and finds what a replay from the first event finds; a checkpoint that does
not check out (its signature, its files, the log at its position) is refused."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from bus import subjects
from bus.events import CreditsDebited, CreditsReserved, RCPAwarded
from bus.signing import load_or_create_key, node_id
from bus.streams import ensure_streams
from projections import audit_checkpoint
from projections.audit import audit
from projections.audit_checkpoint import CheckpointRefused, Checkpoints
from projections.rebuild import rebuild
from tests.histories import History, credit_history, signed_job
from tests.integration.projections.test_audit import NOW, publish
from tests.integration.projecting import project

pytestmark = pytest.mark.asyncio


@pytest.fixture
def keys(tmp_path: Path) -> list[SigningKey]:
    return [load_or_create_key(tmp_path / "nodes" / f"node-{i}.key") for i in range(3)]


@pytest.fixture
def history(keys) -> History:
    return credit_history(23, jobs=40, accounts=6, nodes=keys)


@pytest.fixture
def checkpoints(tmp_path: Path) -> Checkpoints:
    return Checkpoints(tmp_path / "data" / "audit")


async def logged(js, live, events) -> int:
    """Publish ``events`` and project them into ``live``; the stream's last sequence."""
    last = await publish(js, events)
    await project(live, js, last)
    return last


async def checkpointed(js, stores, history: History, checkpoints: Checkpoints) -> int:
    """The history logged and audited once (which writes the first checkpoint)."""
    last = await logged(js, stores("live"), history.events)
    report = await audit(js, stores("live"), checkpoints=checkpoints)
    assert report.ok, report.render()
    assert report.checkpoint == f"no checkpoint yet: replayed from the first event; " \
                                f"a new one at sequence {last:,}"
    return last


def paid_job(history: History) -> tuple[str, str]:
    awarded = {e.job_id for _, e in history.events if isinstance(e, RCPAwarded)}
    return next((e.job_id, e.account) for _, e in history.events
                if isinstance(e, CreditsDebited) and e.job_id in awarded)


def resign(checkpoints: Checkpoints, change) -> None:
    """Edit the manifest and sign it again with the auditor's key: a checkpoint
    the auditor wrote, whose marks no longer match the log."""
    manifest = json.loads(checkpoints.manifest.read_text())
    change(manifest["body"])
    key = load_or_create_key(checkpoints.directory / audit_checkpoint.KEY_FILE)
    manifest["signature"] = audit_checkpoint._sign(key, manifest["body"])
    checkpoints.manifest.write_text(json.dumps(manifest))


@pytest.mark.parametrize("parallel", [True, False], ids=["child", "in-process"])
async def test_audit_from_a_checkpoint_reads_only_the_events_after_it(
        js, stores, keys, history, checkpoints, parallel) -> None:
    first = await checkpointed(js, stores, history, checkpoints)
    more = signed_job(keys[0], "after", "acme", "op-0", award_to=("op-0", node_id(keys[0])))
    last = await logged(js, stores("live"), more)

    report = await audit(js, stores("live"), checkpoints=checkpoints, parallel=parallel)

    assert report.ok, report.render()
    assert (report.resumed_from, report.events, report.stream_last) == (first, len(more), last)
    assert report.jobs == len({getattr(e, "job_id", None) for _, e in history.events} - {None}) + 1
    assert f"checkpoint: resumed after sequence {first:,}; a new one at sequence {last:,}" in \
        report.render()
    again = await audit(js, stores("live"), checkpoints=checkpoints, parallel=parallel)
    assert again.ok and (again.resumed_from, again.events) == (last, 0), again.render()
    assert again.checkpoint.endswith("; it stands (nothing new)")


async def test_a_tampered_event_after_the_checkpoint_fails_the_audit(
        js, stores, history, checkpoints) -> None:
    first = await checkpointed(js, stores, history, checkpoints)
    job, account = paid_job(history)  # settled before the checkpoint
    await logged(js, stores("live"), [("eu", CreditsDebited(account=account, job_id=job,
                                                            amount=7, zone="eu"))])

    report = await audit(js, stores("live"), checkpoints=checkpoints)

    assert not report.ok and report.resumed_from == first and report.events == 1
    assert any(f"I1 job {job}: debited twice (again 7 at seq {first + 1}" in v
               for v in report.violations), report.render()
    assert report.checkpoint.endswith("none written (the audit failed)")
    assert json.loads(checkpoints.manifest.read_text())["body"]["checked"]["seq"] == first


async def test_a_resumed_audit_reports_what_a_full_replay_reports(
        js, stores, keys, history, checkpoints) -> None:
    await checkpointed(js, stores, history, checkpoints)
    job, account = paid_job(history)
    key = keys[1]
    twice = signed_job(key, "twice", "acme", "op-1", award_to=("op-1", node_id(key)))
    stuck = CreditsReserved(account="acct-001", job_id="stuck", key_id="k", amount=1000,
                            zone="eu", deadline=NOW - timedelta(hours=1))
    await logged(js, stores("live"), [
        ("eu", CreditsDebited(account=account, job_id=job, amount=3, zone="eu")),
        *twice, twice[-1][0:1] + (twice[-1][1].model_copy(update={"event_id": "again"}),),
        *signed_job(key, "forged", "acme", "op-1", forged=True, award_to=("op-1", node_id(key))),
        ("eu", stuck)])

    resumed = await audit(js, stores("live"), list(history.ledger.values()),
                          checkpoints=checkpoints)
    full = await audit(js, stores("live"), list(history.ledger.values()))

    assert resumed.resumed_from is not None and full.resumed_from is None
    assert resumed.violations == full.violations and len(full.violations) >= 5, full.render()
    assert (resumed.jobs, resumed.accounts, resumed.open_reservations) == \
        (full.jobs, full.accounts, full.open_reservations)


async def test_a_checkpoint_with_a_bad_signature_is_refused(
        js, stores, history, checkpoints) -> None:
    await checkpointed(js, stores, history, checkpoints)
    manifest = json.loads(checkpoints.manifest.read_text())
    manifest["body"]["checked"]["seq"] -= 1  # as if fewer events had been audited
    checkpoints.manifest.write_text(json.dumps(manifest))

    with pytest.raises(CheckpointRefused, match="bad signature on .*checkpoint.json"):
        await audit(js, stores("live"), checkpoints=checkpoints)


async def test_a_checkpoint_signed_by_another_key_is_refused(
        js, stores, history, checkpoints) -> None:
    await checkpointed(js, stores, history, checkpoints)
    (checkpoints.directory / audit_checkpoint.KEY_FILE).write_bytes(bytes(SigningKey.generate()))

    with pytest.raises(CheckpointRefused, match="bad signature"):
        await audit(js, stores("live"), checkpoints=checkpoints)


@pytest.mark.parametrize("part", ["state", "rebuild"])
async def test_a_checkpoint_whose_file_changed_is_refused(
        js, stores, history, checkpoints, part) -> None:
    await checkpointed(js, stores, history, checkpoints)
    changed = next(checkpoints.directory.glob(f"{part}-*"))
    changed.write_bytes(changed.read_bytes() + b"\0")

    with pytest.raises(CheckpointRefused, match=f"{part} file .* differs from the one it signed"):
        await audit(js, stores("live"), checkpoints=checkpoints)


async def test_a_checkpoint_of_another_event_at_its_sequence_is_refused(
        js, stores, history, checkpoints) -> None:
    last = await checkpointed(js, stores, history, checkpoints)
    resign(checkpoints, lambda body: body["checked"].update(digest="0" * 64))

    with pytest.raises(CheckpointRefused,
                       match=f"another event at sequence {last} than the one audited"):
        await audit(js, stores("live"), checkpoints=checkpoints)


async def test_a_checkpoint_of_a_replaced_stream_is_refused(
        js, stores, history, checkpoints) -> None:
    await checkpointed(js, stores, history, checkpoints)
    await js.delete_stream(subjects.EVENTS_STREAM)  # and the same events logged again
    await ensure_streams(js)
    await publish(js, history.events)

    with pytest.raises(CheckpointRefused, match="EVENTS stream was created at .* \\(replaced"):
        await audit(js, stores("live"), checkpoints=checkpoints)


async def test_full_replay_ignores_the_checkpoint(js, stores, history, checkpoints) -> None:
    last = await checkpointed(js, stores, history, checkpoints)
    resign(checkpoints, lambda body: body["checked"].update(digest="0" * 64))

    full = await audit(js, stores("live"), checkpoints=checkpoints, full=True)

    assert full.ok and full.resumed_from is None and full.events == last, full.render()
    assert full.checkpoint == f"not used (a full replay); a new one at sequence {last:,}"
    resumed = await audit(js, stores("live"), checkpoints=checkpoints)  # the new one checks out
    assert resumed.ok and resumed.resumed_from == last, resumed.render()


async def test_a_checkpoint_ahead_of_the_live_read_model_falls_back_to_a_full_replay(
        js, stores, history, checkpoints) -> None:
    last = await checkpointed(js, stores, history, checkpoints)
    behind = stores("rebuilding")  # a live store rebuilt from nothing, not there yet
    await rebuild(behind, js, upto=last // 2)

    report = await audit(js, behind, checkpoints=checkpoints)

    assert report.resumed_from is None and report.events == last, report.render()
    assert report.checkpoint.startswith(f"the last one is ahead of the live read model "
                                        f"({last:,} > ")


async def test_a_checkpoint_of_other_code_falls_back_to_a_full_replay(
        js, stores, history, checkpoints) -> None:
    last = await checkpointed(js, stores, history, checkpoints)
    resign(checkpoints, lambda body: body.update(shapes="written by an older audit"))

    report = await audit(js, stores("live"), checkpoints=checkpoints)

    assert report.ok and report.resumed_from is None and report.events == last, report.render()
    assert report.checkpoint == ("the checkpoint was written by another version of the audit: "
                                 f"replayed from the first event; a new one at sequence {last:,}")
