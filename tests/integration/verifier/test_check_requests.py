"""What the verifier judges: only a completion its node signed for that job."""
from __future__ import annotations

import pytest

from bus import signing, subjects
from bus.checks import CheckRequest
from bus.config import Settings
from bus.events import JobCompleted, SpotChecked, Usage, output_hash
from bus.streams import grants_bucket
from tests.eventlog import read_log
from tests.integration.verifier.test_rechecks import job
from verifier.judges import EchoJudge, Judges
from verifier.probes import Prober
from verifier.spot_checks import Verifier

pytestmark = pytest.mark.asyncio


class Delivered:
    def __init__(self, data: bytes) -> None:
        self.data, self.acked = data, False

    async def ack(self) -> None:
        self.acked = True

    async def nak(self, delay: float | None = None) -> None:
        raise AssertionError("not expected")


def completion(key, text: str, signed_text: str | None = None) -> JobCompleted:
    node, the_job = signing.node_id(key), job("j1")
    sig = signing.sign_output(key, "j1", 1, "echo", the_job.input_hash(),
                              output_hash(signed_text or text))
    return JobCompleted(job_id="j1", model="echo", node_id=node, operator="op", zone="eu",
                        attempt=1, text=text, finish_reason="length",
                        usage=Usage(prompt_tokens=3, completion_tokens=3),
                        input_hash=the_job.input_hash(), output_hash=output_hash(text),
                        signature=sig)


@pytest.fixture
def verifier(js, tmp_path):
    judges = Judges(tmp_path)
    judges.add("echo", EchoJudge())

    async def make() -> Verifier:
        return Verifier(js, await grants_bucket(js), judges, Settings(data_dir=tmp_path),
                        Prober(js))
    return make


async def test_a_check_request_its_node_did_not_sign_frames_no_one(js, tmp_path, verifier):
    key = signing.load_or_create_key(tmp_path / "node.key")
    forged = completion(key, "x y z", signed_text="a b c")  # the node signed other text
    msg = Delivered(CheckRequest(job=job("j1"), completed=forged).model_dump_json().encode())
    await (await verifier()).handle(msg)
    assert msg.acked
    assert not [e for _, e in await read_log(js) if isinstance(e, SpotChecked)]


async def test_a_signed_completion_is_judged_and_the_verdict_logged(js, tmp_path, verifier):
    key = signing.load_or_create_key(tmp_path / "node.key")
    msg = Delivered(CheckRequest(job=job("j1"), completed=completion(key, "a b c"))
                    .model_dump_json().encode())
    await (await verifier()).handle(msg)
    (checked,) = [e for s, e in await read_log(js) if isinstance(e, SpotChecked)]
    assert checked.passed and checked.job_id == "j1" and msg.acked
    assert subjects.zone_of_event(next(s for s, e in await read_log(js) if e == checked)) == "eu"
