"""The body of ``POST /v1/embeddings`` and the body it answers with.

Strict, like the chat bodies: ``input`` (a string, or a list of up to
:data:`~bus.vectors.MAX_INPUTS` strings; token-id arrays are refused, since
the API never tokenizes), ``model``, ``encoding_format`` (``float`` or
``base64``), ``dimensions`` (only the model's own size: nothing here
truncates vectors) and ``user`` (bookkeeping). Any other field is a 400
naming it. Every refusal is an :class:`~api.errors.APIError` in OpenAI's
shape with ``param`` set, so a client sees which part of its request is wrong.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from api.errors import APIError
from bus.node_record import ModelInfo
from bus.sampling import Sampling
from bus.vectors import MAX_INPUTS, Vectors

FIELDS = {"input", "model", "encoding_format", "dimensions", "user"}
# A job, and its spot check with its vectors, each travel as one NATS message (1 MiB
# at most): its texts, as JSON writes them (escapes counted), must fit with room to
# spare. A text this long is far over any served model's context anyway.
MAX_INPUT_CHARS = 16_384
MAX_INPUT_JSON = 256 * 1024


def _bad(message: str, param: str, code: str = "invalid_request") -> APIError:
    return APIError(400, message, code, param)


@dataclass(frozen=True)
class EmbeddingRequest:
    """A checked ``POST /v1/embeddings`` body (:func:`parse`)."""

    model: str
    input: tuple[str, ...]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    stream = False  # never streamed: the serving code may ask

    def texts(self) -> tuple[str, ...]:
        return self.input

    def sampling(self) -> Sampling:
        """An embedding job generates nothing; its one token only fills the contract."""
        return Sampling(max_tokens=1)

    def model_dump_json(self) -> str:
        """What an ``Idempotency-Key`` compares: the whole body (another
        ``encoding_format`` with the same key is another request: a 422)."""
        return json.dumps({"model": self.model, "input": list(self.input),
                           "encoding_format": self.encoding_format,
                           "dimensions": self.dimensions, "user": self.user}, sort_keys=True)


def parse(body: Any) -> EmbeddingRequest:
    """The request in ``body`` (decoded JSON), or a 400 naming what is wrong."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_json")
    for name in body:
        if name not in FIELDS:
            raise _bad(f"Unrecognized request argument supplied: {name}", name,
                       "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not 1 <= len(model) <= 64:
        raise _bad("model must be a model name (1 to 64 characters)", "model")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise _bad(f"encoding_format must be 'float' or 'base64', not {fmt!r}",
                   "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise _bad("dimensions must be a positive integer", "dimensions")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 512):
        raise _bad("user must be a string of at most 512 characters", "user")
    return EmbeddingRequest(model, _inputs(body.get("input")), fmt, dimensions, user)


def _inputs(value: Any) -> tuple[str, ...]:
    if value is None:
        raise _bad("input is required: a string or a list of strings", "input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise _bad("input must be a non-empty string or a non-empty list of strings", "input")
    if len(texts) > MAX_INPUTS:
        raise _bad(f"input has {len(texts)} items; at most {MAX_INPUTS} per request", "input")
    for i, text in enumerate(texts):
        if isinstance(text, (int, list)) and not isinstance(text, bool):
            raise _bad("token arrays are not served here: send input as text", "input",
                       "unsupported_parameter")
        if not isinstance(text, str):
            raise _bad(f"input[{i}] must be a string", "input")
        if not text.strip():
            raise _bad(f"input[{i}] is empty", "input")
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate (JSON may escape one): no text at all
            raise _bad(f"input[{i}] is not valid Unicode text", "input") from None
        if len(text) > MAX_INPUT_CHARS:
            raise _bad(f"input[{i}] is longer than {MAX_INPUT_CHARS} characters", "input")
    if len(json.dumps(texts)) > MAX_INPUT_JSON:
        raise _bad(f"input is over {MAX_INPUT_JSON // 1024} KiB in all; send fewer texts per "
                   "request", "input")
    return tuple(texts)


def check_model(req: EmbeddingRequest, info: ModelInfo) -> None:
    """``dimensions`` must be the model's own size (400 naming it otherwise)."""
    if req.dimensions is not None and req.dimensions != info.dims:
        raise _bad(f"{info.name} makes vectors of {info.dims} dimensions; dimensions="
                   f"{req.dimensions} is not served", "dimensions", "unsupported_parameter")


def embeddings_body(model: str, vectors: Vectors, prompt_tokens: int,
                    encoding_format: str) -> dict:
    """OpenAI's ``create embeddings`` response."""
    values = vectors.each_base64() if encoding_format == "base64" else vectors.floats()
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": v}
                     for i, v in enumerate(values)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
