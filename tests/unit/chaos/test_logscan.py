"""The soak's log scan tells bugs from the noise an outage makes."""
from tests.chaos.logscan import scan

OUTAGE = """2026-11-23 05:25:11,251 inferbus.worker ERROR job not recorded; it will be redelivered
Traceback (most recent call last):
  File "nats/js/client.py", line 208, in publish
nats.errors.NoRespondersError: nats: no responders available for request
nats.js.errors.NoStreamResponseError: nats: no response from stream
"""
BUG = """2026-11-23 05:24:44,268 inferbus.worker ERROR job not recorded; it will be redelivered
Traceback (most recent call last):
  File "workers/jobs.py", line 97, in run
pydantic_core._pydantic_core.ValidationError: 1 validation error for Finished
event
  Input tag 'JobCancelled' found using 'type' does not match [type=union_tag_invalid, \
input_value=JobCancelled(event_id='93ab12cd34ef56')]
"""


def test_outage_errors_are_counted_but_are_not_bugs(tmp_path):
    (tmp_path / "worker-eu-a.log").write_text(OUTAGE)
    by_process, bugs = scan(tmp_path)
    assert by_process == {"worker-eu-a": {"NoRespondersError": 1, "NoStreamResponseError": 1}}
    assert bugs == []


def test_a_contract_validation_error_is_a_bug_named_once_per_kind(tmp_path):
    (tmp_path / "worker-eu-a.log").write_text(BUG + OUTAGE + BUG.replace("93ab12cd34ef56", "ff"))
    _, bugs = scan(tmp_path)
    assert len(bugs) == 1 and bugs[0].endswith("(x2)"), bugs
    assert "Finished" in bugs[0] and "Input tag 'JobCancelled'" in bugs[0]
