"""One worker serves several streaming requests at once: their tokens come in
turn by turn (one batched decode step feeds them all), each stream is exactly
what the same request gets alone, and the node reports them all as busy."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from bus.events import JobStarted
from tests.conftest import LONG_MODEL
from tests.eventlog import job_log
from tests.stack import isolated_stack

STREAMS = 4


@pytest.fixture(scope="module")
def one_worker(models_dir, tmp_path_factory):
    with isolated_stack(tmp_path_factory.mktemp("batching"), models_dir,
                        {"INFERBUS_MAX_BATCH": "8"}) as s:
        s.start_worker("eu", LONG_MODEL, "worker-eu")
        s.start_api()
        s.key = s.new_key("batch", credits="100")
        s.wait_for_model(s.key, LONG_MODEL)
        yield s


def request(i: int) -> dict:
    # Long enough (about 3 s here) to span more than one heartbeat, which is when a
    # node reports how many jobs it runs: a shorter batch can end between two.
    return dict(model=LONG_MODEL, max_tokens=1800, temperature=0,
                messages=[{"role": "user", "content": f"Story {i}: " + "once upon a time " * i}])


def stream_timed(client: openai.OpenAI, body: dict) -> tuple[str, str, list[float]]:
    """(job id, text, arrival time of each text chunk)."""
    raw = client.chat.completions.with_raw_response.create(**body, stream=True)
    text, times = "", []
    for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            times.append(time.monotonic())
    return raw.headers["x-inferbus-job"], text, times


def test_one_worker_streams_concurrent_requests_in_one_batch(one_worker):
    s = one_worker
    client = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key=s.key, max_retries=0,
                           timeout=120)
    busy, done = [], threading.Event()

    def watch_busy() -> None:
        while not done.is_set():
            try:
                busy.append(httpx.get(f"{s.base_url}/status.json", timeout=5)
                            .json()["totals"]["busy"])
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_busy)
    watcher.start()
    try:
        with ThreadPoolExecutor(STREAMS) as pool:
            results = list(pool.map(lambda i: stream_timed(client, request(i)), range(STREAMS)))
    finally:
        done.set()
        watcher.join()

    # Every stream had begun before any ended, and their chunks interleave in time.
    assert max(times[0] for _, _, times in results) < min(times[-1] for _, _, times in results)
    timeline = sorted((t, i) for i, (_, _, times) in enumerate(results) for t in times)
    switches = sum(a[1] != b[1] for a, b in zip(timeline, timeline[1:]))
    assert switches >= 4 * STREAMS, switches  # one stream after another would switch 3 times
    assert max(busy) >= 2, busy
    # One node ran them all, each once.
    starts = [e for job_id, _, _ in results for _, e in job_log(s.nats_url, job_id)
              if isinstance(e, JobStarted)]
    assert len(starts) == STREAMS and len({e.node_id for e in starts}) == 1
    # Batched, each stream is what the same request streams alone.
    for i, (_, text, _) in enumerate(results):
        assert stream_timed(client, request(i))[1] == text
