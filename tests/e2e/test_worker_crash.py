"""A worker that dies or stalls mid-stream does not lose the job: its lease runs
out, another worker takes the job over and continues from the text the client
already has, the stream goes on with nothing twice and nothing missing, and the
job is billed once. A stalled worker that wakes up is fenced: its late result
is dropped and never paid."""
import signal
import shutil
import time

import openai
import pytest

from bus.events import JobCompleted, JobStarted, output_hash
from bus.pricing import Pricing
from tests.conftest import TINY_MODEL
from tests.eventlog import job_log
from tests.stack import Stack
from workers.pull_loop import STOP_GRACE_S

LONG = dict(model=TINY_MODEL, max_tokens=400, temperature=0,
            messages=[{"role": "user", "content": "Tell me a long story."}])


@pytest.fixture
def crash_stack(fresh_nats, models_dir, tmp_path):
    shutil.copytree(models_dir, tmp_path / "models")
    s = Stack(tmp_path, fresh_nats.url, env_extra={"INFERBUS_JOB_ACK_WAIT_S": "2"})
    s.start_projector()
    s.start_worker("eu", TINY_MODEL, "worker-eu-a")
    s.start_api()
    try:
        s.key = s.new_key("carol")
        s.wait_for_model(s.key, TINY_MODEL)
        yield s
    finally:
        s.stop()


def stream_with_fault(s: Stack, fault) -> tuple[str, str, str]:
    """Stream LONG, calling ``fault()`` after the first text arrives: (job id, text
    before the fault, the whole text the client got)."""
    client = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key=s.key, max_retries=0, timeout=120)
    stream = client.chat.completions.with_raw_response.create(**LONG, stream=True)
    text, before = "", None
    for chunk in stream.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            if before is None:
                fault()
                before = text
    assert before is not None
    return stream.headers["x-inferbus-job"], before, text


def money_of(s: Stack, job_id: str) -> list:
    deadline = time.monotonic() + 15
    while True:
        money = [e for _, e in job_log(s.nats_url, job_id) if type(e).__name__.startswith("Credits")]
        if any(type(e).__name__ == "CreditsRefunded" for e in money) or time.monotonic() > deadline:
            return money
        time.sleep(0.2)


def assert_continued_once(s: Stack, job_id: str, before: str, text: str) -> JobCompleted:
    events = [e for _, e in job_log(s.nats_url, job_id)]
    starts = [e for e in events if isinstance(e, JobStarted)]
    done = [e for e in events if isinstance(e, JobCompleted)]
    assert [e.attempt for e in starts] == [1, 2] and starts[0].node_id != starts[1].node_id
    assert len(done) == 1 and done[0].attempt == 2 and done[0].node_id == starts[1].node_id
    # Nothing twice, nothing missing: the client got exactly the job's output, which
    # goes on from what it had before the fault.
    # (The log keeps the output's hash; the text itself is content, kept apart.)
    assert done[0].output_hash == output_hash(text) and done[0].text == ""
    assert text.startswith(before) and len(text) > len(before)
    # Billed once, for the tokens delivered (counted by the node that finished).
    money = money_of(s, job_id)
    assert sorted(type(e).__name__ for e in money) == \
        ["CreditsDebited", "CreditsRefunded", "CreditsReserved"]
    debit = next(e for e in money if type(e).__name__ == "CreditsDebited")
    assert debit.amount == Pricing().cost(TINY_MODEL, done[0].usage)
    assert 0 < done[0].usage.completion_tokens <= LONG["max_tokens"]
    return done[0]


def test_killed_worker_is_taken_over_mid_stream_and_continued_without_duplicates(crash_stack):
    s = crash_stack

    def kill_and_replace():
        s.kill("worker-eu-a")  # SIGKILL mid-generation: no result, no ack, no renewal
        s.start_worker("eu", TINY_MODEL, "worker-eu-b")

    job_id, before, text = stream_with_fault(s, kill_and_replace)
    assert_continued_once(s, job_id, before, text)


def test_stalled_worker_is_fenced_and_its_late_result_dropped(crash_stack):
    s = crash_stack
    stalled = s.procs["worker-eu-a"]

    def stall_and_add():
        stalled.send_signal(signal.SIGSTOP)  # paused: its lease runs out, it cannot tell
        s.start_worker("eu", TINY_MODEL, "worker-eu-b")

    try:
        job_id, before, text = stream_with_fault(s, stall_and_add)
    finally:
        stalled.send_signal(signal.SIGCONT)
    completed = assert_continued_once(s, job_id, before, text)
    # Awake again, the first worker finds its lease taken and publishes nothing.
    deadline = time.monotonic() + 15
    while "lease on job" not in s.log("worker-eu-a") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"lease on job {job_id}" in s.log("worker-eu-a")
    time.sleep(1)
    assert [e for _, e in job_log(s.nats_url, job_id) if isinstance(e, JobCompleted)] == \
        [completed]


def test_a_worker_stopped_mid_stream_finishes_its_job_itself_then_exits(crash_stack):
    s = crash_stack
    worker = s.procs["worker-eu-a"]
    job_id, before, text = stream_with_fault(s, worker.terminate)  # SIGTERM: no new jobs
    # It kept telling the gate it lives while it finished: no takeover, one run.
    events = [e for _, e in job_log(s.nats_url, job_id)]
    starts = [e for e in events if isinstance(e, JobStarted)]
    done = [e for e in events if isinstance(e, JobCompleted)]
    assert [e.attempt for e in starts] == [1] and len(done) == 1
    assert done[0].node_id == starts[0].node_id and done[0].output_hash == output_hash(text)
    assert worker.wait(timeout=STOP_GRACE_S + 7) == 0
