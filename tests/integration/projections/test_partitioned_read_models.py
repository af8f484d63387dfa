"""Read models in partitions, on a real nats-server and each store backend: one
projector per partition, each reading its own events under its own position,
build the rows one projector builds; the audit rebuilds each partition to its
own position, also while one lags, and carries on from a checkpoint; a store
kept under another partition count is refused."""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import AsyncIterator, Sequence

import pytest

from bus.events import ApiKeyIssued, Event, ReferralLinked, ReferralRewarded
from bus.partitions import shard_of_account
from bus.publish import event_subject, publish_event
from bus.signing import load_or_create_key
from projections.audit import audit
from projections.audit_checkpoint import Checkpoints
from projections.audit_compare import snapshot
from projections.layout import LayoutRefused, Partition, check_layout, layout
from projections.projector import Projector
from projections.rebuild import rebuild
from tests.histories import History, credit_history, relayed_shard
from tests.integration.projecting import project

pytestmark = pytest.mark.asyncio
N = 2


async def publish_relayed(js, events: Sequence[tuple[str, Event]], n: int = N) -> list[str]:
    """Publish as the network logs: a job's events under its slot, money under
    the shard of its account. Returns each event's subject, in order."""
    out = []
    for zone, event in events:
        shard = relayed_shard(event, n)
        out.append(event_subject(event, zone, shard))
        await publish_event(js, event, zone, shard=shard)
    return out


@contextlib.asynccontextmanager
async def partitions(store, js, parts: Sequence[Partition], n: int = N
                     ) -> AsyncIterator[dict[str, Projector]]:
    """One live projector per partition of ``parts``, running while the block runs."""
    everyone = layout(n)
    running = {p.name: Projector(store, js, projection=p.name, holds=p.holds,
                                 check=lambda tx: check_layout(tx, everyone)) for p in parts}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stop)) for p in running.values()]
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def caught_up(running: dict[str, Projector], subjects_in_order: list[str],
                    first_seq: int = 1) -> None:
    """Wait until each projector has applied the last event of its own."""
    for name, projector in running.items():
        part = next(p for p in layout(N) if p.name == name)
        own = [first_seq + i for i, s in enumerate(subjects_in_order) if part.holds(s)]
        if own:
            await projector.wait_for(own[-1], timeout=20)


@pytest.fixture
def history(tmp_path: Path) -> History:
    keys = [load_or_create_key(tmp_path / "nodes" / f"node-{i}.key") for i in range(3)]
    return credit_history(41, jobs=60, accounts=8, nodes=keys, stamped=True)


async def test_partitions_together_build_the_rows_one_projector_builds(js, stores,
                                                                        history) -> None:
    keys = [("global", ApiKeyIssued(key_hash=f"{i:064x}", account=f"acct-{i:03d}"))
            for i in range(3)]
    published = await publish_relayed(js, keys + history.events)
    live = stores("live")
    async with partitions(live, js, layout(N)) as running:
        await caught_up(running, published)
    positions, rows = snapshot(live)
    assert set(positions) == {p.name for p in layout(N)}
    assert all(positions.values())  # each partition read some of the log

    one = stores("one")
    assert await rebuild(one, js, timeout=30) == len(published)
    _, expected = snapshot(one)
    assert rows == expected and len(rows["reservations"]) > 20

    report = await audit(js, live, list(history.ledger.values()), partitions=N)
    assert report.ok, report.render()
    wrong = await audit(js, live, partitions=1)
    assert not wrong.ok and "another INFERBUS_LEDGER_PARTITIONS" in wrong.render()


async def test_a_lagging_partition_is_audited_at_its_own_position_and_carried_on_from_later(
        js, stores, history, tmp_path) -> None:
    half = len(history.events) // 2
    live, checkpoints = stores("live"), Checkpoints(tmp_path / "audit")
    first = await publish_relayed(js, history.events[:half])
    async with partitions(live, js, layout(N)) as running:
        await caught_up(running, first)
    second = await publish_relayed(js, history.events[half:])
    ahead = [p for p in layout(N) if p.name != f"jobs-1-of-{N}"]
    async with partitions(live, js, ahead) as running:  # partition 1 stays at the half
        await caught_up(running, first + second)
    positions, _ = snapshot(live)
    assert positions[f"jobs-1-of-{N}"] <= half < positions[f"jobs-0-of-{N}"]

    lagging = await audit(js, live, checkpoints=checkpoints, partitions=N)
    assert lagging.ok, lagging.render()
    assert "a new one" in lagging.checkpoint

    async with partitions(live, js, layout(N)) as running:
        await caught_up(running, first + second)
    resumed = await audit(js, live, list(history.ledger.values()), checkpoints=checkpoints,
                          partitions=N)
    assert resumed.ok, resumed.render()
    assert resumed.resumed_from is not None and resumed.events < len(first + second)
    full = await audit(js, live, list(history.ledger.values()), partitions=N)
    assert full.ok and (full.jobs, full.accounts) == (resumed.jobs, resumed.accounts)


async def test_a_referral_rewarded_before_its_link_is_projected_makes_the_same_row(
        js, stores) -> None:
    referred = "acct-000"
    referrer = next(a for a in (f"acct-{i:03d}" for i in range(1, 50))
                    if shard_of_account(a, N) != shard_of_account(referred, N))
    linked = ReferralLinked(account=referred, referrer=referrer, code="friends")
    rewarded = ReferralRewarded(referrer=referrer, account=referred, job_id="j", points=7,
                                zone="eu")
    published = await publish_relayed(js, [("global", linked), ("global", rewarded)])
    live = stores("live")
    theirs = [p for p in layout(N) if p.name == f"jobs-{shard_of_account(referrer, N)}-of-{N}"]
    async with partitions(live, js, theirs) as running:  # the referrer's partition first
        await caught_up(running, published)
    async with partitions(live, js, layout(N)) as running:
        await caught_up(running, published)
    one = stores("one")
    await rebuild(one, js, timeout=30)
    assert snapshot(live)[1]["referrals"] == snapshot(one)[1]["referrals"]
    assert snapshot(live)[1]["referrals"][referred]["code"] == "friends"
    report = await audit(js, live, partitions=N)  # the rows as rebuilt (no paid job: I8)
    assert [v[:2] for v in report.violations] == ["I8"], report.render()


async def test_a_store_kept_under_another_partition_count_is_refused(js, stores,
                                                                      history) -> None:
    published = await publish_relayed(js, history.events[:40])
    live = stores("live")
    await project(live, js, len(published))  # one partition: "jobs"
    projector = Projector(live, js, projection=layout(N)[0].name, holds=layout(N)[0].holds,
                          check=lambda tx: check_layout(tx, layout(N)))
    with pytest.raises(LayoutRefused, match="another partition count"):
        await projector.run(asyncio.Event())
