"""A worker that dies mid-job does not lose the job: it is delivered again, the
client's stream goes on without duplicated text, and it completes once."""
import shutil
import time

import openai
import pytest

from bus.events import JobCompleted, JobStarted
from tests.conftest import TINY_MODEL
from tests.eventlog import job_log
from tests.stack import Stack

LONG = dict(model=TINY_MODEL, max_tokens=400, temperature=0,
            messages=[{"role": "user", "content": "Tell me a long story."}])


@pytest.fixture
def crash_stack(fresh_nats, models_dir, tmp_path):
    shutil.copytree(models_dir, tmp_path / "models")
    s = Stack(tmp_path, fresh_nats.url, env_extra={"INFERBUS_JOB_ACK_WAIT_S": "2"})
    s.start("projector", "projector")
    s.start_worker("eu", TINY_MODEL, "worker-eu-a")
    s.start_api()
    try:
        s.key = s.new_key("carol")
        s.wait_for_model(s.key, TINY_MODEL)
        yield s
    finally:
        s.stop()


def test_job_of_a_killed_worker_is_redelivered_and_streamed_without_duplicates(crash_stack):
    s = crash_stack
    client = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key=s.key, max_retries=0, timeout=120)
    stream = client.chat.completions.with_raw_response.create(**LONG, stream=True)
    job_id = stream.headers["x-inferbus-job"]
    text, killed = "", False
    for chunk in stream.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            if not killed:
                s.kill("worker-eu-a")  # SIGKILL mid-generation: no result, no ack
                s.start_worker("eu", TINY_MODEL, "worker-eu-b")
                killed = True
    assert killed
    reference = client.chat.completions.create(**LONG).choices[0].message.content
    assert text == reference  # greedy: the rerun continues the same text, nothing twice

    events = [e for _, e in job_log(s.nats_url, job_id)]
    starts = [e for e in events if isinstance(e, JobStarted)]
    done = [e for e in events if isinstance(e, JobCompleted)]
    assert [e.attempt for e in starts] == [1, 2]
    assert len(starts[0].node_id) == len(starts[1].node_id) and starts[0].node_id != starts[1].node_id
    assert len(done) == 1 and done[0].attempt == 2 and done[0].text == reference

    # Exactly one settlement: one reservation, one debit, one refund of the rest.
    deadline = time.monotonic() + 15
    while True:
        money = [type(e).__name__ for e in [e for _, e in job_log(s.nats_url, job_id)]
                 if type(e).__name__.startswith("Credits")]
        if "CreditsRefunded" in money or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(money) == ["CreditsDebited", "CreditsRefunded", "CreditsReserved"]
