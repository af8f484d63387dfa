"""The fault schedule of a chaos soak, planned from a seed alone.

The plan depends on nothing but ``(seed, minutes, workers, nats_nodes)``: no
clock, no process state. So a seed printed by a failing run replays the same
faults, in the same order, at the same planned offsets, on the same targets.
(The stack's own timing is not reproducible; the schedule is.)

Faults are episodes that do not overlap: each breaks one thing, holds it
broken for ``hold_s`` and repairs it, then a seeded gap follows. Kinds are
drawn from a shuffled bag, so every kind comes up once before any comes up
twice: a two-minute run already covers all four.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

WORKER_KILL = "worker_kill"  # SIGKILL a worker; start it again after hold_s
WORKER_STALL = "worker_stall"  # SIGSTOP a worker for hold_s, then SIGCONT
NATS_KILL = "nats_kill"  # SIGKILL one NATS server; restart it after hold_s
PROJECTOR_KILL = "projector_kill"  # SIGKILL the projector; start it again after hold_s
KINDS = (WORKER_KILL, WORKER_STALL, NATS_KILL, PROJECTOR_KILL)

# How long each kind holds its damage. A stall outlasts the job lease (the
# soak's ack wait is 2 s), so the stalled worker's job really is taken over.
HOLD_S = {WORKER_KILL: (1.0, 6.0), WORKER_STALL: (3.0, 8.0),
          NATS_KILL: (3.0, 10.0), PROJECTOR_KILL: (1.0, 6.0)}
GAP_S = (2.0, 6.0)  # quiet time between two episodes
WARMUP_S = 8.0  # load runs alone first, so jobs are in every state when the first fault lands
COOLDOWN_S = 8.0  # no episode ends later than this before the load stops


@dataclass(frozen=True)
class Fault:
    n: int
    at_s: float  # planned start, seconds after the load starts
    kind: str
    target: str  # a worker's name, "nats-<i>" or "projector"
    hold_s: float

    def describe(self) -> str:
        return f"#{self.n:<3} t+{self.at_s:6.1f}s  {self.kind:<15} {self.target:<12} " \
               f"hold {self.hold_s:4.1f}s"

    def as_dict(self) -> dict:
        return asdict(self)


def plan(seed: int, minutes: float, workers: tuple[str, ...], nats_nodes: int) -> list[Fault]:
    """The faults of a ``minutes``-long soak under ``seed``, in order."""
    rng = random.Random(f"inferbus-soak-{seed}")  # a string seed: stable across Pythons
    end = minutes * 60 - COOLDOWN_S
    faults: list[Fault] = []
    bag: list[str] = []
    at = WARMUP_S
    while True:
        if not bag:
            bag = list(KINDS)
            rng.shuffle(bag)
        kind = bag.pop()
        hold = round(rng.uniform(*HOLD_S[kind]), 1)
        if kind in (WORKER_KILL, WORKER_STALL):
            target = rng.choice(workers)
        elif kind == NATS_KILL:
            target = f"nats-{rng.randrange(nats_nodes)}"
        else:
            target = "projector"
        if at + hold > end:
            return faults
        faults.append(Fault(len(faults) + 1, round(at, 1), kind, target, hold))
        at += hold + rng.uniform(*GAP_S)


def render(seed: int, faults: list[Fault]) -> str:
    lines = [f"fault schedule for seed {seed} ({len(faults)} faults; "
             f"rerun with --seed {seed}):"]
    return "\n".join(lines + [f"  {f.describe()}" for f in faults])
