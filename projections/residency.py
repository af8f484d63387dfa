"""I7, as far as the log can show it: a strict subcloud's job runs only in its
subcloud's zones, and its prompt and output never appear on the log (the log
reaches every region; content stays in the region's content store).

Folded by the invariant checker (:mod:`projections.invariants`) in stream
order: ``SubcloudCreated`` gives each subcloud's zones; a strict
``JobSubmitted`` names the zones its job may run in; a ``JobStarted`` or
``JobCompleted`` in another zone, or a strict job's event carrying its
content, is a violation. Which disks hold the content is proven by the
tests that search the servers' stores (``tests/e2e/test_regions.py``).
"""
from __future__ import annotations

from bus.events import Event, JobCompleted, JobStarted, JobSubmitted, SubcloudCreated
from projections.audit_state import Violations


class Residency:
    def __init__(self, v: Violations) -> None:
        self.v = v
        self.subclouds: dict[str, tuple[str, ...]] = {}
        self.strict: dict[str, tuple[str, tuple[str, ...]]] = {}  # job -> (subcloud, zones)

    def observe(self, event: Event) -> None:
        if isinstance(event, SubcloudCreated):
            self.subclouds[event.name] = event.zones
        elif isinstance(event, JobSubmitted) and event.strict:
            name = event.subcloud or "-"
            self.strict[event.job_id] = (name, self.subclouds.get(name, (event.zone,)))
            if event.messages is not None or event.prompt is not None:
                self.v.add("I7", f"job {event.job_id} of strict subcloud {name}: its prompt "
                                 "is on the log")
        elif isinstance(event, (JobStarted, JobCompleted)) and event.job_id in self.strict:
            name, zones = self.strict[event.job_id]
            if event.zone not in zones:
                self.v.add("I7", f"job {event.job_id} of strict subcloud {name} ran in zone "
                                 f"{event.zone}, outside {', '.join(zones)}")
            if isinstance(event, JobCompleted) and event.text:
                self.v.add("I7", f"job {event.job_id} of strict subcloud {name}: its output "
                                 "is on the log")
