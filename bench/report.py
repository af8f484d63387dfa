"""Where every benchmark writes its JSON (``bench/results/<name>.json``), and the
small measures and settings several benchmarks share."""
from __future__ import annotations

import argparse
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


def cpu_by_name(name: str) -> dict[int, float]:
    """CPU seconds so far of every process called ``name`` (a database's backends)."""
    out = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == name:
                out[int(proc.name)] = cpu_s(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return out


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two :func:`cpu_by_name` readings (a process
    started meanwhile counts from nothing)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def with_schema(url: str, schema: str) -> str:
    """PostgreSQL ``url`` with its tables in ``schema`` (the ledger's search_path)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def partitions_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print one line per partition count, ``columns`` as (title, key, format),
    where the key ``ratio`` is the row's jobs/s against 1 partition's, measured in
    the same run (set on each row)."""
    base = rows[0]["jobs_per_s"] if rows[0]["partitions"] == 1 else None
    widths = [max(len(title), 6) for title, _, _ in columns]
    print(" ".join(f"{title:>{w}}" for (title, _, _), w in zip(columns, widths)))
    for r in rows:
        r["ratio"] = r["jobs_per_s"] / base if base else None
        cells = []
        for (_, key, spec), w in zip(columns, widths):
            value = r[key]
            text = ("-" if value is None else f"{value:.2f}x") if key == "ratio" else \
                format(value, spec)
            cells.append(f"{text:>{w}}")
        print(" ".join(cells))


def partitions_parser(doc: str, jobs: int, quick: int, database: str) -> argparse.ArgumentParser:
    """The options of a bench run at several partition counts: ``--jobs`` (default
    ``jobs``), ``--partitions``, ``--quick`` (``quick`` jobs) and ``--database-url``
    (``database``: what goes to PostgreSQL)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--jobs", type=int, help=f"jobs per partition count (default {jobs})")
    parser.add_argument("--partitions", default="1,2,4", help="partition counts, e.g. 1,2,4")
    parser.add_argument("--quick", action="store_true", help=f"{quick} jobs: a smoke check")
    parser.add_argument("--database-url", help=f"{database} in PostgreSQL (default: SQLite)")
    return parser


def partition_counts(text: str) -> list[int]:
    """``--partitions``' counts, 1 (the baseline) first."""
    return sorted({int(n) for n in text.split(",")}, key=lambda n: (n != 1, n))


def save_partitions(name: str, args: argparse.Namespace, rows: list[dict], ok: bool,
                    what: str) -> None:
    """Write a partitions bench's results and say where, with the machine's CPUs
    and ``what`` ran on which database."""
    path = save(name, {"quick": args.quick, "cpus": os.cpu_count(),
                       "database": "postgresql" if args.database_url else "sqlite",
                       "rows": rows, "ok": ok})
    print(f"({os.cpu_count()} CPUs; {what} in "
          f"{'PostgreSQL' if args.database_url else 'SQLite'}) -> {path}")
