"""Read-model partitions: each event a read model applies is read by exactly one
partition, the one of its account's ledger shard (keys by a partition of their
own), for every shard count; and a store keeps the positions of one layout."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bus import subjects
from bus.events import (ApiKeyIssued, ApiKeyRevoked, CreditsDebited, CreditsDeposited,
                        CreditsRefunded, CreditsReimbursed, CreditsReserved, JobCancelled,
                        JobEscalated, JobExpired, JobFailed, JobStarted, RCPAwarded, RCPRevoked,
                        ReferralLinked, ReferralRewarded, ReferralRewardRevoked, new_id)
from bus.partitions import shard_of_account, stamp
from bus.publish import event_subject
from projections.layout import LayoutRefused, check_layout, layout
from projections.readmodels import POSITION, open_store_url
from tests.integration.projecting import submitted

ACCOUNTS = [f"acct-{i}" for i in range(40)]
DEADLINE = datetime.now(timezone.utc) + timedelta(minutes=5)


def job_events(account: str) -> list:
    job = stamp(new_id(), account)
    return [submitted(job).model_copy(update={"account": account}),
            JobStarted(job_id=job, zone="eu", node_id="n", attempt=1),
            JobEscalated(job_id=job, zone="eu", from_queue="eu", to="global", reason="none"),
            JobFailed(job_id=job, node_id="n", zone="eu", code="model_error", message="x"),
            JobCancelled(job_id=job, zone="eu", reason="gone"),
            JobExpired(job_id=job, zone="eu")]


def money_events(account: str, other: str) -> list:
    """What ``account``'s ledger shard relays (``other`` is a referred account)."""
    job = stamp(new_id(), account)
    return [CreditsDeposited(account=account, amount=5),
            CreditsReserved(account=account, job_id=job, key_id="k", amount=5, zone="eu",
                            deadline=DEADLINE),
            CreditsDebited(account=account, job_id=job, amount=1, zone="eu"),
            CreditsRefunded(account=account, job_id=job, amount=4, zone="eu", reason="settled"),
            CreditsReimbursed(account=account, job_id=job, amount=1, zone="eu", reason="r"),
            RCPAwarded(operator=account, job_id=new_id(), node_id="n", points=3, zone="eu"),
            RCPRevoked(operator=account, job_id=new_id(), node_id="n", points=3, zone="eu",
                       reason="r"),
            ReferralLinked(account=account, referrer=other, code="c"),
            ReferralRewarded(referrer=account, account=other, job_id=new_id(), points=1,
                             zone="eu"),
            ReferralRewardRevoked(referrer=account, account=other, job_id=new_id(), points=1,
                                  zone="eu", reason="r")]


def holders(n: int, subject: str) -> list[str]:
    return [p.name for p in layout(n) if p.holds(subject)]


@pytest.mark.parametrize("n", [2, 3, 4, 16])
def test_every_event_a_read_model_applies_is_read_by_its_accounts_partition_alone(n):
    for account in ACCOUNTS:
        mine = f"jobs-{shard_of_account(account, n)}-of-{n}"
        for event in job_events(account):
            assert holders(n, event_subject(event, "eu")) == [mine], event.type
        for event in money_events(account, ACCOUNTS[-1]):
            shard = shard_of_account(account, n)
            assert holders(n, event_subject(event, "global", shard)) == [mine], event.type
    for event in (ApiKeyIssued(key_hash="ab" * 32, account="a"),
                  ApiKeyRevoked(key_hash="ab" * 32, account="a")):
        assert holders(n, event_subject(event, "eu")) == [f"keys-of-{n}"]


def test_one_partition_reads_the_whole_log():
    (only,) = layout(1)
    assert only.name == POSITION and only.reads == (subjects.all_events(),)
    assert only.holds("events.eu.NodeStrike") and only.holds("events.eu.JobStarted.j3")


@pytest.mark.parametrize("pattern,subject,expected", [
    ("events.*.*.j3", "events.eu.JobStarted.j3", True),
    ("events.*.*.j3", "events.eu.JobStarted", False),
    ("events.*.*.j3", "events.eu.JobStarted.j3.x", False),
    ("events.>", "events.eu", True),
    ("events.>", "events", False),
    ("events.*.ApiKeyIssued.*", "events.global.ApiKeyIssued.ff", True),
    ("events.*.ApiKeyIssued.*", "events.global.ApiKeyRevoked.ff", False),
])
def test_a_filter_matches_as_nats_matches_it(pattern, subject, expected):
    assert subjects.matches(pattern, subject) is expected


def test_a_store_with_positions_of_another_layout_is_refused(tmp_path):
    store = open_store_url(tmp_path / "readmodels.sqlite3")
    try:
        with store.transaction() as tx:
            tx.execute("INSERT INTO tracking (projection, position) VALUES ('jobs', 9)")
            check_layout(tx, layout(1))  # its own layout
            with pytest.raises(LayoutRefused, match="another partition count .jobs., not 2"):
                check_layout(tx, layout(2))
            tx.execute("INSERT INTO tracking (projection, position) VALUES ('jobs-1-of-2', 4)")
            with pytest.raises(LayoutRefused, match="jobs-1-of-2"):
                check_layout(tx, layout(4))
    finally:
        store.close()
