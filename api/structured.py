"""Structured outputs: ``response_format`` as a :class:`~bus.sampling.Grammar`,
checked before a job is queued.

``text`` is free output; ``json_object`` any JSON object; ``json_schema`` an
object that validates against the schema. The worker constrains decoding to
the grammar (llguidance), so the output always parses. ``strict: true`` asks
for the schema exactly: a keyword the grammar compiler cannot enforce is a
400. Otherwise (OpenAI's best effort) such keywords are dropped (llguidance's
``lenient`` mode) and the rest still enforced.

:func:`grammar_problem` compiles a grammar as the worker will, without a
tokenizer (torch-free), so a schema no node could use is refused with the
compiler's message instead of failing on a node.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bus.grammar_check import check, one_line
from bus.sampling import MAX_GRAMMAR, Grammar


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(default="response", pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = Field(default=None, max_length=4096)
    # ``schema`` shadows a BaseModel attribute: the field has another name in Python.
    json_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"},
                                        alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object "
                             '({"name": ..., "schema": {...}})')
        return self

    def grammar(self) -> Grammar | None:
        """The grammar of the output, checked (ValueError with the compiler's reason)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return Grammar(kind="json_object")
        spec = self.json_schema
        schema = dict(spec.json_schema)
        if not spec.strict:
            schema["x-guidance"] = {**schema.get("x-guidance", {}), "lenient": True}
        text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        if len(text) > MAX_GRAMMAR:
            raise ValueError(f"the schema is over {MAX_GRAMMAR} characters")
        grammar = Grammar(kind="json_schema", text=text)
        if problem := grammar_problem(grammar):
            raise ValueError(f"the schema cannot be enforced: {problem}")
        return grammar


def grammar_problem(grammar: Grammar) -> str | None:
    """Why no node could decode with ``grammar`` (one line); None when it compiles.
    The check is the one the worker's compiler makes (:mod:`bus.grammar_check`)."""
    try:
        return check(grammar)
    except Exception as exc:  # noqa: BLE001 - the compiler's reason, whatever it raised
        return one_line(str(exc)) or type(exc).__name__
