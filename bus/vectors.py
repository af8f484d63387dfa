"""Embedding vectors on the wire: one compact, hashable field.

An embedding job's result is ``count`` vectors of ``dims`` floats, sent as ONE
base64 string of little-endian float32 (:class:`Vectors`): a quarter of the
size of a JSON list of floats, byte-exact (so the node's signature over its
hash, :meth:`Vectors.digest`, is over exactly what the caller gets), and the
very bytes OpenAI's ``encoding_format: "base64"`` returns for each vector.

Bounds: a job embeds at most :data:`MAX_INPUTS` texts (OpenAI allows 2048;
one NATS message is at most 1 MiB, and the result of 256 vectors of 384 floats
is 512 KiB of base64), and a vector has at most :data:`MAX_DIMS` floats.
Nothing here imports numpy or torch: the gate and the API decode with the
standard library.
"""
from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array

from pydantic import Field, model_validator

from bus.contracts import Contract

MAX_INPUTS = 256  # texts in one embedding job
MAX_DIMS = 4096  # floats in one vector
MAX_VECTOR_CHARS = (MAX_INPUTS * 384 * 4 * 4) // 3 + 4  # 256 vectors of all-MiniLM's 384
NORM_TOLERANCE = 1e-3  # an L2-normalised float32 vector's norm is 1 within this


class Vectors(Contract):
    """``count`` vectors of ``dims`` float32 each, little-endian, base64 (``data``)."""

    count: int = Field(ge=1, le=MAX_INPUTS)
    dims: int = Field(ge=1, le=MAX_DIMS)
    data: str = Field(max_length=MAX_VECTOR_CHARS)

    @model_validator(mode="after")
    def _sized(self) -> "Vectors":
        if len(self.data) != 4 * math.ceil(self.count * self.dims * 4 / 3):
            raise ValueError(f"data does not hold {self.count} vectors of {self.dims} floats")
        return self

    def digest(self) -> str:
        """What a node signs for this result (see ``bus.events.output_hash``)."""
        return hashlib.sha256(f"vectors|{self.count}|{self.dims}|".encode()
                              + self.data.encode()).hexdigest()

    def floats(self) -> list[list[float]]:
        """The vectors as lists of Python floats, in input order."""
        flat = _unpack(base64.b64decode(self.data, validate=True))
        return [flat[i * self.dims:(i + 1) * self.dims].tolist() for i in range(self.count)]

    def each_base64(self) -> list[str]:
        """Each vector alone as base64 float32 (OpenAI's ``encoding_format=base64``)."""
        raw, size = base64.b64decode(self.data, validate=True), self.dims * 4
        return [base64.b64encode(raw[i * size:(i + 1) * size]).decode()
                for i in range(self.count)]

    def unnormalised(self) -> int | None:
        """The index of the first vector that is not finite or not of unit length
        (a sentence-transformers model with a Normalize step makes only unit
        vectors), None when all are."""
        for i, vector in enumerate(self.floats()):
            norm = math.sqrt(math.fsum(x * x for x in vector))
            if not math.isfinite(norm) or abs(norm - 1.0) > NORM_TOLERANCE:
                return i
        return None


def pack(vectors: list[list[float]] | list[bytes], dims: int) -> Vectors:
    """Vectors from float lists, or from each vector's little-endian float32 bytes."""
    if vectors and isinstance(vectors[0], (bytes, bytearray, memoryview)):
        raw = b"".join(bytes(v) for v in vectors)
    else:
        values = array("f", (x for v in vectors for x in v))
        if sys.byteorder == "big":
            values.byteswap()
        raw = values.tobytes()
    if len(raw) != len(vectors) * dims * 4:
        raise ValueError(f"expected {len(vectors)} vectors of {dims} floats")
    return Vectors(count=len(vectors), dims=dims, data=base64.b64encode(raw).decode())


def _unpack(raw: bytes) -> array:
    values = array("f")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def cosine(a: list[float], b: list[float]) -> float:
    """Cosine similarity of two vectors (0 when either is all zeros)."""
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(math.fsum(x * x for x in a)), math.sqrt(math.fsum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0
