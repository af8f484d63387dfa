"""A wall clock tests move by hand (``clock.now += 11``), for code that takes a
``clock`` callable returning unix time."""
from __future__ import annotations

import time


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now
