"""Where every benchmark writes its JSON (``bench/results/<name>.json``), and the
small measures and settings several benchmarks share."""
from __future__ import annotations

import json
import os
from pathlib import Path


def pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (nearest rank below: no interpolation)."""
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def save(name: str, result: dict) -> Path:
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_schema(url: str, schema: str) -> str:
    """PostgreSQL ``url`` with its tables in ``schema`` (the ledger's search_path)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
