"""The one rule every subject token follows (``bus.subjects`` spells them)."""
from __future__ import annotations

import re

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def check_token(value: str, what: str) -> str:
    """A subject token must not contain dots, wildcards or spaces."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} may only hold letters, digits, '-' and '_'")
    return value
