"""OpenAI response shapes (the request bodies are :mod:`api.chat_request`).

Response builders are shared by the sync path, the stream (:mod:`api.sse`)
and ``GET /v1/jobs/{id}`` so all return the same body. A choice of a tool job
(:func:`api.tools.is_tool_job`) whose text is a call is answered as
``message.tool_calls`` with ``content: null`` and ``finish_reason:
"tool_calls"``. Credits are shown as JSON numbers (:func:`bus.credits.credits`).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

# The request bodies moved to api.chat_request; importers of the old home keep working.
from api.chat_request import ChatCompletionRequest, CompletionRequest  # noqa: F401
from api.logprob_shapes import logprobs_body
from api.tools import is_tool_job, parse_calls
from bus.credits import credits
from bus.events import JobCompleted, JobSubmitted, Usage
from bus.model_book import CatalogBook
from bus.node_record import ModelInfo
from bus.sampling import TokenLogprob
from projections.lifecycle import QUEUED


@dataclass(frozen=True)
class Choice:
    """One finished choice of a call (``n`` > 1 gives several, one job each)."""

    text: str
    finish_reason: str
    logprobs: Sequence[TokenLogprob] | None = None


def usage_body(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def completion_id(kind: str, job_id: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{job_id}"


def message_body(text: str, finish_reason: str, *, job_id: str = "", index: int = 0,
                 tools: bool = False) -> tuple[dict, str]:
    """A chat choice's ``message`` and its ``finish_reason``: for a tool job whose
    text is a call, the call as ``tool_calls`` (ids from ``job_id`` and ``index``)."""
    calls = parse_calls(text, job_id, index) if tools else None
    if calls:
        return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
    return {"role": "assistant", "content": text}, finish_reason


def choices_body(kind: str, job_id: str, model: str, created: int, choices: Sequence[Choice],
                 usage: Usage, *, tools: bool = False) -> dict:
    """The body of a finished call with one or more choices (indexed in order);
    ``usage`` is their sum."""
    out = []
    for index, c in enumerate(choices):
        logprobs = logprobs_body(kind, c.logprobs)
        if kind == "chat":
            message, reason = message_body(c.text, c.finish_reason, job_id=job_id, index=index,
                                           tools=tools)
            out.append({"index": index, "message": message, "finish_reason": reason,
                        "logprobs": logprobs})
        else:
            out.append({"index": index, "text": c.text, "finish_reason": c.finish_reason,
                        "logprobs": logprobs})
    return {"id": completion_id(kind, job_id), "created": created, "model": model,
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "choices": out, "usage": usage_body(usage)}


def result_body(kind: str, job_id: str, model: str, created: int, text: str,
                finish_reason: str, usage: Usage, *,
                logprobs: Sequence[TokenLogprob] | None = None, tools: bool = False) -> dict:
    """The body of a finished sync call, also the ``result`` of ``GET /v1/jobs/{id}``."""
    return choices_body(kind, job_id, model, created, [Choice(text, finish_reason, logprobs)],
                        usage, tools=tools)


def completed_body(job: JobSubmitted, created: int, outcome: JobCompleted) -> dict:
    """The sync body of ``job`` finished as ``outcome``: its logprobs when it asked
    for them, its call as ``tool_calls`` when it is a tool job."""
    return result_body(job.kind, job.job_id, job.model, created, outcome.text,
                       outcome.finish_reason, outcome.usage,
                       logprobs=outcome.logprobs if job.sampling.logprobs is not None else None,
                       tools=is_tool_job(job.sampling))


def chunk_body(kind: str, job_id: str, model: str, created: int, text: str | None = None,
               finish_reason: str | None = None, usage: Usage | None = None,
               first: bool = False, *, index: int = 0,
               logprobs: Sequence[TokenLogprob] | None = None, text_offset: int = 0,
               tool_calls: list[dict] | None = None) -> dict:
    """One SSE chunk of choice ``index``; with ``usage`` set it is the final
    usage-only chunk. ``logprobs``: the tokens of ``text`` (``text_offset``: where
    it starts in the completion); ``tool_calls``: a ``delta.tool_calls`` list."""
    if usage is not None:
        choices = []
    elif kind == "chat":
        delta = {"role": "assistant", "content": ""} if first else (
            {"content": text} if text else {})
        if tool_calls:
            delta["tool_calls"] = tool_calls
        choices = [{"index": index, "delta": delta, "finish_reason": finish_reason,
                    "logprobs": logprobs_body(kind, logprobs)}]
    else:
        choices = [{"index": index, "text": text or "", "finish_reason": finish_reason,
                    "logprobs": logprobs_body(kind, logprobs, text_offset)}]
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    body = {"id": completion_id(kind, job_id), "object": obj, "created": created,
            "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage_body(usage)
    return body


def accepted_body(job_id: str, url: str) -> dict:
    """The ``202`` body of an async call: the job, queued, and where to poll it. It has
    no ``choices``: a client cannot take it for a completion (see docs/contract.md)."""
    return {"id": job_id, "object": "job", "status": QUEUED, "url": url, "result": None}


def models_body(served: dict[str, ModelInfo], catalog: CatalogBook | None = None) -> dict:
    """``GET /v1/models``: the models live nodes serve, by name, each with the root
    that names its weights and, when published, its size and the regions holding it."""
    data = []
    for name, info in sorted(served.items()):
        item = {"id": name, "object": "model", "created": 0, "owned_by": "inferbus",
                "context_length": info.context_length, "root": info.root}
        entry = catalog.entries.get(name) if catalog else None
        if entry is not None and (version := entry.current()) is not None:
            item.update(root=version.root, size_bytes=version.size,
                        regions=list(version.regions),
                        created=int(version.published_at.timestamp()))
        data.append(item)
    return {"object": "list", "data": data}


def account_body(account: str, balance: int, held: int, spent: int, rcp: int) -> dict:
    """``GET /v1/account``: micro-credits shown as credits; RCP as points."""
    return {"object": "account", "account": account, "balance": float(credits(balance)),
            "held": float(credits(held)), "spent": float(credits(spent)), "rcp": rcp}


def now() -> int:
    return int(time.time())
