"""Subjects of a ledger split into shards (``bus.partitions``): the last token a
job outcome carries (its job's slot) and the one a shard's relayed money
carries, and the filters each shard's settlement and relay read by. Part of
:mod:`bus.subjects`.
"""
from __future__ import annotations

from typing import Sequence

_EVENTS = "events"


def slot_token(slot: int) -> str:
    """The last token of a job outcome's subject: its job's slot (``bus.partitions``)."""
    return f"j{slot:x}"


def shard_token(shard: int) -> str:
    """The last token of a money event a ledger of several shards relays from ``shard``."""
    return f"s{shard}"


def settled_by_shard(event_types: Sequence[str], slots: Sequence[int] | None) -> list[str]:
    """What one ledger shard's settlement reads: these job outcomes, of its ``slots``
    only (None: every slot, and outcomes logged before slots, for a single shard)."""
    if slots is None:
        return [f for t in event_types for f in (f"{_EVENTS}.*.{t}", f"{_EVENTS}.*.{t}.*")]
    return [f"{_EVENTS}.*.{t}.{slot_token(s)}" for t in event_types for s in slots]


def relayed_by_shard(event_types: Sequence[str], shard: int | None) -> list[str]:
    """The money events relayed from one ledger shard (None: the only one, whose
    events carry no shard token)."""
    if shard is None:
        return [f"{_EVENTS}.*.{t}" for t in event_types]
    return [f"{_EVENTS}.*.{t}.{shard_token(shard)}" for t in event_types]


def read_by_partition(partition: int, slots: Sequence[int]) -> list[str]:
    """What read-model partition ``partition`` of several reads: every job event of
    its ``slots`` and the money its ledger shard relays (:mod:`projections.layout`)."""
    return [f"{_EVENTS}.*.*.{slot_token(s)}" for s in slots] + \
        [f"{_EVENTS}.*.*.{shard_token(partition)}"]


def keys_read() -> list[str]:
    """What the API-keys partition of a split read model reads: keys, under their hash."""
    return [f"{_EVENTS}.*.ApiKeyIssued.*", f"{_EVENTS}.*.ApiKeyRevoked.*"]


def matches(pattern: str, subject: str) -> bool:
    """Whether NATS would deliver ``subject`` to a consumer filtered by ``pattern``
    (``*``: one token, ``>``: the rest, at least one)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(have) == len(want)
