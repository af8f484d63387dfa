"""Billing partitions: a job id carries its account's slot, every slot belongs to
exactly one shard, and a job's outcome is logged where its shard reads it."""
import pytest

from bus import subjects
from bus.events import JobCompleted, JobExpired, JobStarted, SpotChecked, Usage, new_id
from bus.partitions import (SLOTS, account_slot, check_partitions, job_slot, shard_of_account,
                            shard_of_job, slots_of, stamp)
from bus.publish import event_subject


def test_a_stamped_job_id_routes_to_its_accounts_shard_for_every_shard_count():
    for i in range(200):
        account, job_id = f"acct{i}", stamp(new_id(), f"acct{i}")
        assert job_slot(job_id) == account_slot(account)
        for n in range(1, SLOTS + 1):
            assert shard_of_job(job_id, n) == shard_of_account(account, n)


def test_stamping_is_deterministic_so_an_idempotent_id_stays_one_id():
    base = new_id()
    assert stamp(base, "acme") == stamp(base, "acme") and len(stamp(base, "acme")) == len(base)


def test_every_slot_belongs_to_exactly_one_shard():
    for n in range(1, SLOTS + 1):
        owned = [s for k in range(n) for s in slots_of(k, n)]
        assert sorted(owned) == list(range(SLOTS))


def test_a_job_id_that_is_not_hex_still_has_a_slot():
    assert 0 <= job_slot("calibration") < SLOTS and 0 <= job_slot("") < SLOTS


@pytest.mark.parametrize("n", [0, 17, -1])
def test_a_shard_count_outside_1_to_16_is_refused(n):
    with pytest.raises(ValueError, match="1 to 16"):
        check_partitions(n)


def test_a_shard_a_ledger_does_not_have_owns_no_slots():
    with pytest.raises(ValueError, match="not one of 0..3"):
        slots_of(4, 4)


def test_every_event_of_a_job_carries_its_jobs_slot():
    job_id = stamp(new_id(), "acme")
    token = subjects.slot_token(job_slot(job_id))
    completed = JobCompleted(job_id=job_id, model="m", node_id="n", operator="op", zone="eu",
                             attempt=1, text="x", finish_reason="stop",
                             usage=Usage(prompt_tokens=1, completion_tokens=1),
                             input_hash="i", output_hash="o", signature="s")
    check = SpotChecked(job_id=job_id, node_id="n", zone="eu", attempt=1, passed=False,
                        reason="r")
    assert event_subject(completed, "eu") == f"events.eu.JobCompleted.{token}"
    assert event_subject(JobExpired(job_id=job_id, zone="eu"), "eu") == \
        f"events.eu.JobExpired.{token}"
    assert event_subject(check, "eu") == f"events.eu.SpotChecked.{token}"
    assert event_subject(JobStarted(job_id=job_id, zone="eu", node_id="n", attempt=1), "eu") \
        == f"events.eu.JobStarted.{token}"


def test_a_shards_settlement_filter_matches_its_own_slots_only():
    n = 4
    for k in range(n):
        filters = subjects.settled_by_shard(["JobCompleted"], slots_of(k, n))
        assert filters == [f"events.*.JobCompleted.j{s:x}" for s in range(k, 16, n)]
    # one shard reads outcomes with or without a slot (logged before slots existed)
    assert subjects.settled_by_shard(["JobCompleted"], None) == [
        "events.*.JobCompleted", "events.*.JobCompleted.*"]
