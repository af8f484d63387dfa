"""Chat messages as OpenAI clients send them, and how they reach a model.

Every role OpenAI defines is accepted: ``system``, ``developer`` (a system
turn for models that know no developer role), ``user``, ``assistant`` (its
``content`` may be null beside ``tool_calls``) and ``tool`` (a tool's result,
naming the call it answers). Content is a string or a list of text parts;
image, audio and file parts are refused by name, as this network serves text
models only. Fields clients echo back from a response (``refusal``,
``annotations``, ...) are ignored.

:func:`render` turns them into the worker's :class:`~bus.events.ChatMessage`
turns: an assistant's tool calls become the JSON text the model is asked to
write for a call (:mod:`api.tools`), so a conversation reads to the model as
its own earlier calls, and a tool result keeps role ``tool`` (SmolLM2's
ChatML template writes any role name), prefixed with the tool's name.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from bus.events import ChatMessage

_NOT_SERVED = {"image_url": "image", "input_audio": "audio", "file": "file", "image": "image"}
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


def part_error(index: int, detail: str) -> PydanticCustomError:
    """An error in content part ``index``; the error handler names it ``content[index]``."""
    return PydanticCustomError("content_part", "{detail}", {"part": index, "detail": detail})


def content_text(value: Any) -> str | None:
    """A message's content as one text: a string, or text parts joined; None stays None."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise PydanticCustomError("content_type", "must be a string or a list of text parts")
    texts = []
    for i, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _NOT_SERVED:
            raise part_error(i, f"{_NOT_SERVED[kind]} parts are not served by this network "
                                "(text only)")
        if kind not in ("text", "refusal"):
            raise part_error(i, "must be a text part: {\"type\": \"text\", \"text\": \"...\"}")
        text = part.get(kind)
        if not isinstance(text, str):
            raise part_error(i, f"a {kind} part's {kind!r} must be a string")
        texts.append(text)
    return "".join(texts)


class FunctionCall(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    arguments: str = Field(max_length=256 * 1024)  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class RequestMessage(BaseModel):
    """One turn of a chat request (module docstring)."""

    model_config = ConfigDict(extra="ignore")  # what SDKs echo back from a response

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = None  # validated by ``_content``: any other type gets a clear message
    name: str | None = Field(default=None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=64)
    tool_call_id: str | None = Field(default=None, max_length=128)

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> str | None:
        return content_text(value)

    @model_validator(mode="after")
    def _role_rules(self) -> RequestMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"{'an' if self.role == 'assistant' else 'a'} {self.role} message "
                             "needs content"
                             + (" (or tool_calls)" if self.role == "assistant" else ""))
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self


def call_text(name: str, arguments: str) -> str:
    """The text a model writes for one tool call (what :mod:`api.tools` constrains to)."""
    try:
        args = json.loads(arguments)
    except ValueError:
        args = arguments  # the client's own text: passed on as it is
    return json.dumps({"name": name, "arguments": args}, ensure_ascii=False)


def render(messages: list[RequestMessage]) -> tuple[ChatMessage, ...]:
    """The turns the worker's chat template gets (module docstring)."""
    names: dict[str, str] = {}  # tool call id -> the tool it called
    out = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        text = m.content or ""
        if m.tool_calls:
            names.update((c.id, c.function.name) for c in m.tool_calls)
            calls = "\n".join(call_text(c.function.name, c.function.arguments)
                              for c in m.tool_calls)
            text = f"{text}\n{calls}" if text else calls
        elif m.role == "tool":
            tool = names.get(m.tool_call_id or "") or m.name or "the tool"
            text = f"Result of {tool}: {text}"
        out.append(ChatMessage(role=role, content=text))
    return tuple(out)
