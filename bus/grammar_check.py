"""Whether a :class:`~bus.sampling.Grammar` can constrain a generation, and its compiled form.

The API calls :func:`check` to refuse a bad schema or grammar with a 400 before a
job is queued; the worker compiles the same text with :func:`compile_grammar`
into the llguidance grammar its matchers run (``workers.grammar``), so what the
API accepts is what the worker runs. Torch-free: llguidance alone, no tokenizer.

JSON (``json_object``, ``json_schema``) is compiled with no free whitespace
between tokens (``whitespace_flexible: False``): a small model left free to
emit whitespace can loop on it until ``max_tokens``. A schema's unsupported
keywords are errors, not ignored: the caller asked for them.
"""
from __future__ import annotations

import json
from typing import Any

from llguidance import LLMatcher, LLParserLimits

from bus.sampling import Grammar

_JSON_OPTIONS = {"whitespace_flexible": False}
# verbose_errors off: an error names the problem, not the parser's internal state.
LIMITS = LLParserLimits(verbose_errors=False)


class BadGrammar(ValueError):
    """A schema or grammar that cannot be compiled; the message is for the caller."""


def compile_grammar(grammar: Grammar) -> str:
    """The llguidance grammar for ``grammar``; raises BadGrammar when it is unusable
    (whether it compiles fully is only known by building a matcher, or ``check``)."""
    if grammar.kind == "json_object":
        schema: Any = {"type": "object"}
    elif grammar.kind == "json_schema":
        try:
            schema = json.loads(grammar.text)
        except ValueError as exc:
            raise BadGrammar(f"the JSON schema is not valid JSON: {exc}") from None
        except RecursionError:
            raise BadGrammar("the JSON schema is nested too deeply") from None
        if schema is False:
            raise BadGrammar("the JSON schema false matches nothing")
        if schema is True:
            schema = {}  # any JSON value
        if not isinstance(schema, dict):
            raise BadGrammar("a JSON schema must be an object or a boolean")
    else:
        if not grammar.text.strip():
            raise BadGrammar("the lark grammar is empty")
        return LLMatcher.grammar_from_lark(grammar.text)
    try:
        return LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
    except (ValueError, TypeError, RecursionError) as exc:
        raise BadGrammar(f"the JSON schema cannot be used: {exc}") from None


def check(grammar: Grammar) -> str | None:
    """Why ``grammar`` cannot constrain a generation (one line, for a 400), or None.

    Pure; checks the grammar itself, without a model's tokenizer (a worker may
    still fail a job whose grammar its model's vocabulary cannot spell).
    """
    try:
        compiled = compile_grammar(grammar)
    except BadGrammar as exc:
        return one_line(str(exc))
    error = LLMatcher.validate_grammar(compiled, limits=LIMITS)
    return one_line(error) if error else None


def one_line(message: str) -> str:
    return " ".join(message.split())[:500]
