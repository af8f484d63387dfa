"""The chaos soak's fault schedule depends on its seed alone."""
from tests.chaos.schedule import COOLDOWN_S, KINDS, WARMUP_S, plan

WORKERS = ("w-a", "w-b", "w-c")


def test_the_same_seed_plans_the_same_faults():
    assert plan(11, 2, WORKERS, 3) == plan(11, 2, WORKERS, 3)


def test_another_seed_plans_other_faults():
    assert plan(11, 2, WORKERS, 3) != plan(12, 2, WORKERS, 3)


def test_two_minutes_cover_every_kind_of_fault_inside_the_load():
    for seed in range(50):
        faults = plan(seed, 2, WORKERS, 3)
        assert {f.kind for f in faults} == set(KINDS), seed
        assert faults[0].at_s >= WARMUP_S
        assert faults[-1].at_s + faults[-1].hold_s <= 120 - COOLDOWN_S


def test_episodes_do_not_overlap_and_name_real_targets():
    faults = plan(3, 5, WORKERS, 3)
    for before, after in zip(faults, faults[1:]):
        assert before.at_s + before.hold_s < after.at_s
    assert {f.target for f in faults} <= {*WORKERS, "nats-0", "nats-1", "nats-2", "projector"}
