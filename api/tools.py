"""Tools: OpenAI's function definitions, what the model is told, how its output
is constrained, and how the finished text becomes ``tool_calls``.

The models served here have no tool template (SmolLM2's ChatML has none), so
the definitions go into the system turn (:func:`system_text`) and a call is
constrained JSON: ``{"name": <tool>, "arguments": <its parameters>}``.
``tool_choice`` decides the grammar (:func:`grammar`): ``required`` allows a
call to any tool, a named choice a call to that one, ``none`` leaves tools out
of the prompt and the output free. ``auto`` is a Lark grammar allowing either
free text that does not open with ``{`` or a call: the worker masks every
token outside it, so a reply that opens like a call is a valid call, and one
that does not is text. One call per reply (``parallel_tool_calls`` is accepted
and yields at most one).

Every grammar the API writes for tools opens with :data:`MARKER`; users cannot
send Lark grammars, so a job whose grammar opens with it is a tool job
(:func:`is_tool_job`), which lets every reader of a job (sync body, stream,
``GET /v1/jobs``) turn its text into calls without the request at hand.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.messages import NAME_PATTERN
from bus.sampling import TOOL_CALL_MARKER, Grammar, Sampling

MARKER = TOOL_CALL_MARKER
MAX_TOOLS = 128
_ANY_ARGS = {"type": "object"}


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=4096)
    parameters: dict[str, Any] | None = None  # a JSON Schema of the arguments object
    strict: bool | None = None  # enforce every keyword of ``parameters`` (else best effort)

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value: dict | None) -> dict | None:
        if value is not None and value.get("type", "object") != "object":
            raise ValueError("a function's parameters must be a JSON Schema of type object")
        return value


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class NamedChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedChoice


def chosen(tools: list[Tool], choice: ToolChoice | None) -> tuple[list[Tool], str]:
    """The tools the model may call and how (``auto``, ``required`` or ``none``);
    raises ValueError for a named tool not in ``tools``."""
    if not tools:
        if isinstance(choice, NamedChoice) or choice == "required":
            raise ValueError("needs tools")
        return [], "none"
    mode = choice or "auto"
    if isinstance(mode, NamedChoice):
        named = [t for t in tools if t.function.name == mode.function.name]
        if not named:
            raise ValueError(f"names {mode.function.name!r}, which is not in tools")
        return named, "required"
    return (tools, mode) if mode != "none" else ([], "none")


def _call_schema(tool: Tool) -> dict:
    # Arguments carry the declared parameters only, unless the schema says otherwise:
    # a small model free to add properties invents them until max_tokens.
    arguments = {"additionalProperties": False, **(tool.function.parameters or _ANY_ARGS)}
    return {"type": "object", "properties": {
        "name": {"const": tool.function.name}, "arguments": arguments},
        "required": ["name", "arguments"], "additionalProperties": False}


def grammar(tools: list[Tool], mode: str) -> Grammar | None:
    """The grammar of a reply that calls one of ``tools`` (``required``) or may (``auto``)."""
    if not tools or mode == "none":
        return None
    # No free whitespace (a small model can loop on it); a keyword the compiler cannot
    # enforce is dropped unless a tool asks for strict schemas.
    options = {"whitespace_flexible": False,
               "lenient": not any(t.function.strict for t in tools)}
    calls = json.dumps({"x-guidance": options, "anyOf": [_call_schema(t) for t in tools]},
                       separators=(",", ":"))
    if mode == "required":
        return Grammar(kind="lark", text=f"{MARKER} required\nstart: call\ncall: %json{calls}\n")
    return Grammar(kind="lark", text=f"{MARKER} auto\nstart: call | TEXT\n"
                                     f"TEXT: /[^{{\\s](.|\\n)*/\ncall: %json{calls}\n")


def system_text(tools: list[Tool], mode: str) -> str:
    """What the system turn says about ``tools`` (nothing when the model may not call)."""
    if not tools or mode == "none":
        return ""
    how = ("You must call one of them." if mode == "required"
           else "Call one only when it helps; otherwise answer in plain text.")
    defs = "\n".join(json.dumps({k: v for k, v in (
        ("name", t.function.name), ("description", t.function.description),
        ("parameters", t.function.parameters or _ANY_ARGS)) if v is not None},
        ensure_ascii=False) for t in tools)
    return (f"You can call these tools. {how} To call one, reply with only a JSON object "
            f'{{"name": <tool name>, "arguments": <its arguments>}}.\nTools:\n{defs}')


def is_tool_job(sampling: Sampling) -> bool:
    """Whether a job's text is to be read as a tool call (module docstring)."""
    return sampling.grammar is not None and sampling.grammar.for_tools


def must_call(sampling: Sampling) -> bool:
    """A tool job whose every reply is a call (``required`` or a named tool)."""
    return is_tool_job(sampling) and sampling.grammar.text.startswith(f"{MARKER} required")


def call_id(job_id: str, choice: int = 0, position: int = 0) -> str:
    """A call's id: the same every time the job is read (sync, stream, ``GET /v1/jobs``)."""
    digest = hashlib.sha256(f"{job_id}|{choice}|{position}".encode()).hexdigest()
    return f"call_{digest[:24]}"


def parse_calls(text: str, job_id: str, choice: int = 0) -> list[dict] | None:
    """The ``tool_calls`` of a tool job's finished text; None when it is not a call
    (free text under ``auto``, or a call cut off by ``max_tokens``)."""
    try:
        call = json.loads(text)
    except ValueError:
        return None
    if not (isinstance(call, dict) and isinstance(call.get("name"), str)
            and "arguments" in call):
        return None
    return [{"id": call_id(job_id, choice), "type": "function",
             "function": {"name": call["name"],
                          "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}]
