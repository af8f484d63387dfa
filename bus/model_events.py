"""Events about models: a root published under a name, and one retired.

The catalog (``bus.model_store``) is the live view; these are its audit trail
on the log, so a replay says which weights a name meant at any moment."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from bus.bounds import Name
from bus.contracts import Event
from bus.model_manifest import Sha256


class ModelPublished(Event):
    type: Literal["ModelPublished"] = "ModelPublished"
    name: Name
    root: Sha256
    size: int = Field(ge=0, le=1 << 50)
    regions: tuple[Name, ...] = Field(max_length=64)


class ModelRetired(Event):
    """A root no longer served under ``name``: removed, or drained after a rollout."""

    type: Literal["ModelRetired"] = "ModelRetired"
    name: Name
    root: Sha256
    reason: Name
