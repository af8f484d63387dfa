"""OpenAI request and response shapes (the subset inferbus serves).

Requests validate strictly on what we honour and ignore unknown fields, as
OpenAI clients send many optional ones. Response builders are shared by the
sync path and ``GET /v1/jobs/{id}`` so both return the same body. Credits are
shown as JSON numbers (:func:`bus.credits.credits`).
"""
from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bus.credits import credits
from bus.bounds import MAX_TOKENS
from bus.events import ChatMessage, Sampling, Usage
from bus.model_book import CatalogBook
from bus.node_record import ModelInfo
from projections.lifecycle import QUEUED

DEFAULT_MAX_TOKENS = 256


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class RequestMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart]

    def to_contract(self) -> ChatMessage:
        text = self.content if isinstance(self.content, str) else "".join(
            p.text for p in self.content)
        return ChatMessage(role=self.role, content=text)


class StreamOptions(BaseModel):
    include_usage: bool = False


StopText = Annotated[str, Field(max_length=256)]


class _Generation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: StopText | list[StopText] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    n: int = Field(default=1, ge=1, le=1, description="only n=1 is served")
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def limit(self) -> int | None:
        return self.max_tokens

    def sampling(self) -> Sampling:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return Sampling(max_tokens=self.limit() or DEFAULT_MAX_TOKENS,
                        temperature=self.temperature, top_p=self.top_p, stop=stop, seed=self.seed)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Generation):
    messages: list[RequestMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Generation):
    prompt: str
    max_tokens: int | None = Field(default=16, gt=0, le=MAX_TOKENS)  # OpenAI's legacy default


def usage_body(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def completion_id(kind: str, job_id: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{job_id}"


def result_body(kind: str, job_id: str, model: str, created: int, text: str,
                finish_reason: str, usage: Usage) -> dict:
    """The body of a finished sync call, also the ``result`` of ``GET /v1/jobs/{id}``."""
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": finish_reason, "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        obj = "text_completion"
    return {"id": completion_id(kind, job_id), "object": obj, "created": created, "model": model,
            "choices": [choice], "usage": usage_body(usage)}


def chunk_body(kind: str, job_id: str, model: str, created: int, text: str | None = None,
               finish_reason: str | None = None, usage: Usage | None = None,
               first: bool = False) -> dict:
    """One SSE chunk; with ``usage`` set it is the final usage-only chunk."""
    if usage is not None:
        choices = []
    elif kind == "chat":
        delta = {"role": "assistant", "content": ""} if first else (
            {"content": text} if text else {})
        choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    else:
        choices = [{"index": 0, "text": text or "", "finish_reason": finish_reason,
                    "logprobs": None}]
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    body = {"id": completion_id(kind, job_id), "object": obj, "created": created,
            "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage_body(usage)
    return body


def accepted_body(job_id: str) -> dict:
    """The ``202`` body of an async call: the job, queued (poll ``Location``)."""
    return {"id": job_id, "object": "job", "status": QUEUED}


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
