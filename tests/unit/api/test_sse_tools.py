"""Streams of tool jobs and of jobs that asked for logprobs: calls come out as
OpenAI's delta.tool_calls, free text as content, and each text chunk carries
the log probabilities of its own tokens."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

from api import sse
from api.chat_request import ChatCompletionRequest
from api.reply_router import ReplyRouter
from api.tools import call_id
from bus.events import JobCompleted, JobSubmitted, Sampling, Usage
from bus.replies import Delta, Finished, Started
from bus.sampling import TokenLogprob

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def tool_sampling(choice: str) -> Sampling:
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}],
                                 tools=[TOOL], tool_choice=choice).sampling()


def job(sampling: Sampling, kind: str = "chat") -> JobSubmitted:
    content = {"messages": ({"role": "user", "content": "x"},)} if kind == "chat" \
        else {"prompt": "x"}
    return JobSubmitted(job_id="j1", account="a", key_id="k", model="m", kind=kind,
                        sampling=sampling, zone="eu", route="zone", reply_to="replies.x",
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=1), **content)


def completed(text: str, logprobs=None) -> JobCompleted:
    return JobCompleted(job_id="j1", model="m", node_id="n", operator="o", zone="eu",
                        attempt=1, text=text, finish_reason="stop", logprobs=logprobs,
                        usage=Usage(prompt_tokens=1, completion_tokens=4),
                        input_hash="i", output_hash="o", signature="s")


def stream(submitted: JobSubmitted, replies: list) -> list[dict]:
    async def run() -> list[bytes]:
        watch = ReplyRouter(None).watch("j1", submitted.deadline)
        for reply in replies:
            watch._queue.put_nowait(reply)
        first = Started(job_id="j1", zone="eu", attempt=1)
        return [c async for c in sse.chunks(submitted, 0, False, watch, first, lambda _: None)]
    bodies = [c.decode()[len("data: "):].strip() for c in asyncio.run(run())]
    assert bodies[-1] == "[DONE]"
    return [json.loads(b)["choices"][0] for b in bodies[:-1]]


def pieces(text: str, size: int = 7) -> list[Delta]:
    return [Delta(job_id="j1", offset=i, text=text[i:i + size])
            for i in range(0, len(text), size)]


def test_a_required_call_streams_as_tool_call_deltas():
    choices = stream(job(tool_sampling("required")), [*pieces(CALL), Finished(event=completed(CALL))])
    assert not any(c["delta"].get("content") for c in choices)
    head, args = choices[1]["delta"]["tool_calls"], choices[2]["delta"]["tool_calls"]
    assert head == [{"index": 0, "id": call_id("j1"), "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}]
    assert json.loads(args[0]["function"]["arguments"]) == {"city": "Paris"}
    assert choices[-1]["finish_reason"] == "tool_calls"


def test_free_text_under_auto_streams_as_content():
    text = "It is sunny in Paris."
    choices = stream(job(tool_sampling("auto")), [*pieces(text), Finished(event=completed(text))])
    assert "".join(c["delta"].get("content") or "" for c in choices) == text
    assert not any("tool_calls" in c["delta"] for c in choices)
    assert choices[-1]["finish_reason"] == "stop"


def test_a_call_under_auto_is_held_until_it_is_complete():
    choices = stream(job(tool_sampling("auto")), [*pieces(CALL), Finished(event=completed(CALL))])
    assert [c["finish_reason"] for c in choices][-1] == "tool_calls"
    assert sum("tool_calls" in c["delta"] for c in choices) == 2


def tokens(text: str) -> tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob(token=text[i:i + 2], logprob=-0.5) for i in range(0, len(text), 2))


def test_each_chunk_carries_the_logprobs_of_its_tokens():
    lps = tokens("Hello world!")
    deltas = [Delta(job_id="j1", offset=0, text="Hello ", logprobs=lps[:3]),
              Delta(job_id="j1", offset=6, text="world!", logprobs=lps[3:])]
    choices = stream(job(Sampling(max_tokens=8, logprobs=0)), [
        *deltas, Finished(event=completed("Hello world!", lps))])
    sent = [t["token"] for c in choices if c["logprobs"] for t in c["logprobs"]["content"]]
    assert "".join(sent) == "Hello world!"


def test_logprobs_a_lost_delta_missed_come_from_the_logged_outcome():
    lps = tokens("Hello world!")
    choices = stream(job(Sampling(max_tokens=8, logprobs=0), "completion"), [
        Delta(job_id="j1", offset=0, text="Hello ", logprobs=lps[:3]),
        Finished(event=completed("Hello world!", lps))])
    with_lps = [c for c in choices if c["logprobs"]]
    assert [t for c in with_lps for t in c["logprobs"]["tokens"]] == [t.token for t in lps]
    assert with_lps[-1]["logprobs"]["text_offset"] == [6, 8, 10]
