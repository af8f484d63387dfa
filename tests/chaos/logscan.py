"""What the soak's processes logged: exceptions by type, and those that are bugs.

Chaos makes the processes log plenty that is expected: NATS timeouts and
"no responders" while a server is down or a leader is elected, reconnects,
leases lost to a takeover. Those are counted for the report. An exception that
no outage can explain (a contract that fails its own validation, a wrong
type or attribute) is a bug in inferbus whatever the fault was, and fails the
soak.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

# The last line of a traceback: "package.module.SomeError: message" at column 0.
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Warning))\b(?::\s*(.*))?$")
_ID = re.compile(r"[0-9a-f]{12,}")
BUG_TYPES = ("ValidationError", "AttributeError", "TypeError", "NameError",
             "UnboundLocalError", "AssertionError", "IndexError", "KeyError")


def exceptions(path: Path) -> list[tuple[str, str]]:
    """(exception type, first line of its message) for each traceback end in ``path``."""
    found = []
    lines = path.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        m = _EXCEPTION.match(line)
        if m:
            message = (m.group(2) or "").strip()
            # pydantic puts the useful part ("Input tag 'X' ... does not match") two lines on
            if "validation error" in message and i + 2 < len(lines):
                message = f"{message} {lines[i + 1].strip()}: {lines[i + 2].strip()}"
            message = _ID.sub("<id>", message.split(" [type=")[0])  # one line per kind, not per job
            found.append((m.group(1).rsplit(".", 1)[-1], message[:200]))
    return found


def scan(root: Path) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Per process log in ``root``: exception types and counts; and the bug lines."""
    by_process: dict[str, dict[str, int]] = {}
    bugs: Counter[str] = Counter()
    for path in sorted(root.glob("*.log")):
        found = exceptions(path)
        if found:
            by_process[path.stem] = dict(Counter(kind for kind, _ in found))
        for kind, message in found:
            if kind in BUG_TYPES:
                bugs[f"{path.stem}: {kind}: {message}"] += 1
    return by_process, [f"{line} (x{n})" for line, n in bugs.most_common()]
