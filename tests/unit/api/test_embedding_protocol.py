"""The body of POST /v1/embeddings: what OpenAI clients send is accepted, and
everything else is a 400 that names the parameter at fault."""
from __future__ import annotations

import base64
import struct

import pytest

from api.embedding_protocol import MAX_INPUT_CHARS, check_model, embeddings_body, parse
from api.errors import APIError
from bus.node_record import ModelInfo
from bus.vectors import MAX_INPUTS, pack


def test_a_string_or_a_list_of_strings_is_accepted_with_openais_defaults():
    one = parse({"model": "m", "input": "a cat"})
    assert (one.input, one.encoding_format, one.dimensions) == (("a cat",), "float", None)
    many = parse({"model": "m", "input": ["a", "b"], "encoding_format": "base64", "user": "u",
                  "dimensions": 384})
    assert (many.input, many.encoding_format, many.dimensions) == (("a", "b"), "base64", 384)
    assert one.sampling().max_tokens == 1


@pytest.mark.parametrize("body, param, code", [
    ({"model": "m", "input": [[1, 2, 3]]}, "input", "unsupported_parameter"),
    ({"model": "m", "input": [1, 2, 3]}, "input", "unsupported_parameter"),
    ({"model": "m", "input": []}, "input", "invalid_request"),
    ({"model": "m", "input": ""}, "input", "invalid_request"),
    ({"model": "m", "input": ["ok", None]}, "input", "invalid_request"),
    ({"model": "m", "input": "lone \ud800 surrogate"}, "input", "invalid_request"),
    ({"model": "m"}, "input", "invalid_request"),
    ({"model": "m", "input": ["x"] * (MAX_INPUTS + 1)}, "input", "invalid_request"),
    ({"model": "m", "input": "x" * (MAX_INPUT_CHARS + 1)}, "input", "invalid_request"),
    ({"model": "m", "input": ["é" * MAX_INPUT_CHARS] * 10}, "input", "invalid_request"),
    ({"input": "hi"}, "model", "invalid_request"),
    ({"model": "m", "input": "hi", "encoding_format": "int8"}, "encoding_format",
     "invalid_request"),
    ({"model": "m", "input": "hi", "dimensions": 0}, "dimensions", "invalid_request"),
    ({"model": "m", "input": "hi", "dimensions": True}, "dimensions", "invalid_request"),
    ({"model": "m", "input": "hi", "temperature": 0}, "temperature", "unknown_parameter"),
])
def test_a_bad_body_is_a_400_naming_its_parameter(body, param, code):
    with pytest.raises(APIError) as err:
        parse(body)
    assert (err.value.status, err.value.param, err.value.code) == (400, param, code)


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(APIError) as err:
        parse(["a cat"])
    assert err.value.status == 400


def test_dimensions_other_than_the_models_are_refused():
    info = ModelInfo(name="m", context_length=256, kind="embedding", dims=384)
    check_model(parse({"model": "m", "input": "x", "dimensions": 384}), info)
    with pytest.raises(APIError) as err:
        check_model(parse({"model": "m", "input": "x", "dimensions": 128}), info)
    assert err.value.param == "dimensions" and "384" in err.value.message


def test_the_response_is_openais_list_of_embeddings_in_either_format():
    vectors = pack([[0.5, -1.0], [2.0, 0.25]], 2)
    floats = embeddings_body("m", vectors, 7, "float")
    assert floats["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [d["embedding"] for d in floats["data"]] == [[0.5, -1.0], [2.0, 0.25]]
    assert [(d["object"], d["index"]) for d in floats["data"]] == [("embedding", 0),
                                                                    ("embedding", 1)]
    b64 = embeddings_body("m", vectors, 7, "base64")
    assert struct.unpack("<2f", base64.b64decode(b64["data"][1]["embedding"])) == (2.0, 0.25)
