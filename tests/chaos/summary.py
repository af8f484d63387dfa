"""The soak's report as a table a person reads: requests by mode and outcome,
errors, faults, the odd jobs' events, every check, and the audit."""
from __future__ import annotations

OUTCOMES = ("completed", "failed", "refused", "disconnected", "broken")


def table(report: dict) -> str:
    lines = [f"\nchaos soak: seed {report['seed']}, {report['minutes']:g} min of load "
             f"({report['load_s']:.0f} s, {report['total_s']:.0f} s in all), {report['nats']}",
             f"{'requests by mode':<18} " + " ".join(f"{o:>12}" for o in OUTCOMES)]
    for mode, counts in report["by_mode"].items():
        lines.append(f"  {mode:<16} " + " ".join(f"{counts.get(o, 0):>12}" for o in OUTCOMES))
    total = report["outcomes"]
    lines.append(f"  {'all':<16} " + " ".join(f"{total.get(o, 0):>12}" for o in OUTCOMES))
    if report["error_codes"]:
        lines.append("errors (outcome:status:code): " + ", ".join(
            f"{k} x{v}" for k, v in sorted(report["error_codes"].items())))
    kinds: dict[str, int] = {}
    for f in report["faults_injected"]:
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    lines.append(f"faults injected: {len(report['faults_injected'])} of "
                 f"{len(report['faults_planned'])} planned: "
                 + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())))
    lines.append("jobs' first outcome on the log, by mode: " + "; ".join(
        f"{m} {e}" for m, e in report["logged_endings"].items()))
    if report["histories"]:
        lines.append("events of jobs that did not complete (first 10):")
    for job, events in list(report["histories"].items())[:10]:
        lines.append(f"  {job}: " + ", ".join(events))
    lines.append("checks:")
    lines += [f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}"
              for c in report["checks"]]
    lines.append("audit: " + report["audit"].replace("\n", "\n       "))
    return "\n".join(lines)
