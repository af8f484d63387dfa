"""The node record a worker heartbeats into the ``nodes`` KV bucket."""
from __future__ import annotations

from pydantic import Field

from bus.events import Contract


class ModelInfo(Contract):
    name: str
    context_length: int
    kind: str = "chat"


class NodeRecord(Contract):
    node_id: str
    zone: str
    operator: str
    tier: int = Field(default=1, ge=1, le=6)
    lat: float | None = None
    lon: float | None = None
    gpu: str = "cpu"
    vram_total_gb: float = 0.0
    vram_free_gb: float = 0.0
    gpu_util: float | None = None  # percent busy, when the driver tells
    models: tuple[ModelInfo, ...] = ()
    queue_depth: int = 0
    busy: int = 0
    subcloud: str | None = None  # a private pool's node
    public: bool = True  # serves public zone/global jobs too
