"""Where every benchmark writes its JSON: ``bench/results/<name>.json``."""
from __future__ import annotations

import json
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
