"""What serving a call answers: a finished body, an accepted async job, or a
stream of SSE chunks. The routes turn each into an HTTP response."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Body:
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Accepted:
    body: dict
    headers: dict[str, str]


@dataclass(frozen=True)
class Stream:
    chunks: AsyncIterator[bytes]
    headers: dict[str, str]


Answer = Body | Accepted | Stream
