"""What GET /v1/jobs/{id} says of a completed job's content: the result while it
is kept (and until when), or that it expired or was erased, its bill either way."""
from datetime import datetime, timezone

from api.job_serving import job_body
from bus.content import Output
from projections.job_status import JobView

DONE = JobView(job_id="j", status="completed", account="a", model="m", kind="chat", zone="eu",
               route="zone", prompt_tokens=3, completion_tokens=2,
               created_at=datetime(2026, 12, 1, tzinfo=timezone.utc),
               finished_at=datetime(2026, 12, 1, 0, 0, 1, tzinfo=timezone.utc))


def test_a_kept_result_is_shown_with_when_its_content_expires():
    until = datetime(2026, 12, 8, tzinfo=timezone.utc)
    body = job_body(DONE, 5000, Output("Paris.", "stop", until))
    assert body["result"]["choices"][0]["message"]["content"] == "Paris."
    assert body["content_expires_at"] == int(until.timestamp()) and "content" not in body


def test_an_expired_or_erased_result_is_null_and_says_which_while_the_bill_stays():
    for gone in ("expired", "erased"):
        body = job_body(DONE, 5000, None, gone)
        assert (body["result"], body["content"], body["cost"]) == (None, gone, 0.005)
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
