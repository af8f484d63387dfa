"""Event contracts, subjects and signatures: the bus's promises."""
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from bus import signing, subjects
from bus.partitions import job_slot
from bus.events import (ApiKeyIssued, ChatMessage, JobCompleted, JobStarted, JobSubmitted, Sampling,
                        Usage, output_hash, parse_event)
from bus.publish import event_subject


def job(**kw) -> JobSubmitted:
    base = dict(job_id="j1", account="acme", key_id="k", model="tiny", kind="chat",
                messages=(ChatMessage(role="user", content="hi"),),
                sampling=Sampling(max_tokens=4), zone="eu", route="zone",
                deadline=datetime.now(timezone.utc) + timedelta(seconds=30))
    return JobSubmitted(**{**base, **kw})


def test_every_event_round_trips_through_its_json():
    events = [job(), JobStarted(job_id="j1", node_id="n", zone="eu", attempt=1),
              ApiKeyIssued(key_hash="ab" * 32, account="acme")]
    for event in events:
        assert parse_event(event.model_dump_json()) == event


def test_events_are_frozen_and_reject_unknown_fields():
    e = job()
    with pytest.raises(ValidationError):
        e.account = "other"
    with pytest.raises(ValidationError):
        parse_event(e.model_dump_json()[:-1] + ', "price": 0}')


def test_each_event_gets_its_own_id():
    assert job().event_id != job().event_id


def test_input_hash_covers_what_the_model_is_asked():
    assert job().input_hash() == job(job_id="other").input_hash()
    assert job().input_hash() != job(sampling=Sampling(max_tokens=5)).input_hash()


def test_job_subjects_are_per_zone_and_model():
    assert subjects.jobs("eu", "smollm2-135m-instruct") == "jobs.eu.smollm2-135m-instruct"
    assert subjects.jobs(subjects.GLOBAL, "m") == "jobs.global.m"
    assert event_subject(job(), "eu") == \
        f"events.eu.JobSubmitted.{subjects.slot_token(job_slot(job().job_id))}"
    assert event_subject(ApiKeyIssued(key_hash="ff", account="a"), "eu") == \
        "events.global.ApiKeyIssued.ff"


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "with space", ""])
def test_subject_tokens_reject_dots_and_wildcards(bad):
    with pytest.raises(ValueError):
        subjects.jobs("eu", bad)


def completed(key, **kw) -> JobCompleted:
    usage = Usage(prompt_tokens=3, completion_tokens=2)
    fields = dict(job_id="j1", attempt=1, input_hash="i", output_hash=output_hash("Paris"))
    sig = signing.sign_result(key, fields["job_id"], "op", 2, fields["attempt"],
                              fields["input_hash"], fields["output_hash"], usage)
    base = dict(model="m", node_id=signing.node_id(key), operator="op", tier=2, zone="eu", text="Paris",
                finish_reason="stop", usage=usage, signature=sig, **fields)
    return JobCompleted(**{**base, **kw})


def test_signed_result_verifies(tmp_path):
    key = signing.load_or_create_key(tmp_path / "node.key")
    assert signing.verify_result(completed(key))


@pytest.mark.parametrize("tamper", [
    {"job_id": "j2"}, {"attempt": 2}, {"output_hash": output_hash("Lyon")},
    {"usage": Usage(prompt_tokens=3, completion_tokens=200)}, {"operator": "mallory"},
    {"tier": 6}, {"signature": "00" * 64},
    {"signature": "not hex"}])
def test_tampered_or_moved_result_fails_verification(tmp_path, tamper):
    key = signing.load_or_create_key(tmp_path / "node.key")
    assert not signing.verify_result(completed(key, **tamper))


def test_result_signed_by_another_node_fails(tmp_path):
    key = signing.load_or_create_key(tmp_path / "a.key")
    other = signing.load_or_create_key(tmp_path / "b.key")
    assert not signing.verify_result(completed(key, node_id=signing.node_id(other)))


def test_node_key_persists_with_private_mode(tmp_path):
    path = tmp_path / "node" / "n.key"
    first = signing.load_or_create_key(path)
    assert signing.node_id(signing.load_or_create_key(path)) == signing.node_id(first)
    assert path.stat().st_mode & 0o777 == 0o600
