"""bus.grammar_check: the API's 400 for a schema or grammar no worker could follow,
decided without torch and without a model."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bus.grammar_check import check
from bus.sampling import Grammar

GOOD_SCHEMA = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"],
               "additionalProperties": False}


@pytest.mark.parametrize("grammar", [
    Grammar(kind="json_object"),
    Grammar(kind="json_schema", text=json.dumps(GOOD_SCHEMA)),
    Grammar(kind="json_schema", text="true"),
    Grammar(kind="lark", text='start: "yes" | "no"'),
    Grammar(kind="lark", text='start: %json{"type": "object"}'),
])
def test_a_usable_schema_or_grammar_passes_the_check(grammar):
    assert check(grammar) is None


@pytest.mark.parametrize("grammar, says", [
    (Grammar(kind="json_schema", text="{not json"), "not valid JSON"),
    (Grammar(kind="json_schema", text="[1, 2]"), "must be an object"),
    (Grammar(kind="json_schema", text='{"type": "objectx"}'), "objectx"),
    (Grammar(kind="json_schema", text='{"type": "string", "pattern": "(a"}'), "unclosed group"),
    (Grammar(kind="json_schema", text='{"$ref": "#/defs/missing"}'), "/defs/missing"),
    (Grammar(kind="lark", text="start: undefined_rule"), "undefined_rule"),
    (Grammar(kind="lark", text="   "), "empty"),
    (Grammar(kind="json_schema", text="[" * 5000 + "]" * 5000), "nested too deeply"),
    (Grammar(kind="json_schema", text='{"type":"array","items":' * 600 + "{}" + "}" * 600),
     "recursion limit"),
])
def test_a_bad_schema_or_grammar_is_refused_with_one_line_naming_the_problem(grammar, says):
    message = check(grammar)
    assert message and says in message and "\n" not in message


def test_the_check_loads_neither_torch_nor_transformers():
    code = ("import sys, bus.grammar_check as g, bus.sampling as s;"
            "g.check(s.Grammar(kind='json_object'));"
            "print('torch' in sys.modules or 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
