"""The node record a worker heartbeats into the ``nodes`` KV bucket."""
from __future__ import annotations

from pydantic import Field

from bus.bounds import MAX_TOKENS, Id, Name
from bus.events import Contract
from bus.model_manifest import Sha256


class ModelInfo(Contract):
    name: Name
    context_length: int = Field(ge=1, le=MAX_TOKENS)
    kind: Name = "chat"  # or "embedding": served on /v1/embeddings only
    dims: int | None = Field(default=None, ge=1, le=4096)  # an embeddings model's vector size
    # The root of the weights it serves (bus.model_manifest): routing offers the
    # name's jobs only to a root the catalog publishes (bus.model_book).
    root: Sha256 | None = None


class NodeRecord(Contract):
    node_id: Id
    zone: Name
    operator: Id
    tier: int = Field(default=1, ge=1, le=6)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    gpu: Name = "cpu"
    vram_total_gb: float = Field(default=0.0, ge=0, le=1e5)
    vram_free_gb: float = Field(default=0.0, ge=0, le=1e5)
    gpu_util: float | None = Field(default=None, ge=0, le=100)  # percent busy, when told
    models: tuple[ModelInfo, ...] = Field(default=(), max_length=64)
    queue_depth: int = Field(default=0, ge=0, le=10**7)
    busy: int = Field(default=0, ge=0, le=10**5)
    subcloud: Name | None = None  # a private pool's node
    public: bool = True  # serves public zone/global jobs too
    standing: Name = "unverified"  # from its grant (bus.grants), never from the node
