"""Node discovery (constraints -> ranked candidates) and the tier-aware dispatch policy."""
import math
import random

import pytest

from api.discovery import (Constraints, Plan, Policy, candidates, haversine_km, parse_headers,
                           parse_query, plan)
from api.errors import APIError
from bus.node_record import ModelInfo, NodeRecord

BERLIN = (52.52, 13.405)
M = "llama"


def node(node_id: str, zone: str = "eu", lat: float | None = None, lon: float | None = None,
         tier: int = 1, models: tuple[str, ...] = (M,), load: int = 0,
         vram: float = 8.0) -> NodeRecord:
    return NodeRecord(node_id=node_id, zone=zone, operator="op", tier=tier, lat=lat, lon=lon,
                      vram_total_gb=vram * 2, vram_free_gb=vram, queue_depth=load,
                      models=tuple(ModelInfo(name=m, context_length=2048) for m in models))


def cosine_law_km(lat1, lon1, lat2, lon2) -> float:
    """An independent distance: the spherical law of cosines (not haversine)."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return 6371.0088 * math.acos(max(-1.0, min(1.0, c)))


@pytest.fixture(scope="module")
def nodes() -> list[NodeRecord]:
    """200 nodes around Berlin: ten share coordinates (ties), some have none, some
    serve another model; a seeded RNG keeps the set fixed."""
    rng = random.Random(7)
    out = []
    for i in range(200):
        lat, lon = BERLIN[0] + rng.uniform(-1, 1), BERLIN[1] + rng.uniform(-1.5, 1.5)
        if i % 25 == 0:
            lat = lon = None
        elif i % 20 == 5:  # one data centre 13 km out: distance ties, broken by load then id
            lat, lon = 52.6, 13.55
        out.append(node(f"n{i:03d}", rng.choice(["eu", "eu", "me"]), lat, lon,
                        tier=rng.randint(1, 6), models=(M,) if i % 7 else ("other",),
                        load=rng.randint(0, 2), vram=rng.choice([4.0, 8.0, 24.0, 80.0])))
    return out


def test_within_50_km_returns_exactly_the_nodes_in_range_nearest_first(nodes):
    found = candidates(nodes, Constraints(M, near=BERLIN, within_km=50, k=100))

    dist = {n.node_id: cosine_law_km(*BERLIN, n.lat, n.lon) for n in nodes
            if n.lat is not None and M in {m.name for m in n.models}}
    assert all(abs(d - 50) > 0.01 for d in dist.values())  # no node sits on the boundary
    load = {n.node_id: n.queue_depth for n in nodes}
    expected = sorted((i for i, d in dist.items() if d <= 50),
                      key=lambda i: (round(dist[i], 6), load[i], i))
    assert 10 < len(expected) < 100  # the fixture puts a fair number in range
    assert [c.node_id for c in found] == expected
    for c in found:
        assert c.distance_km == pytest.approx(dist[c.node_id], abs=1e-6)
    assert any(found[i].distance_km == found[i + 1].distance_km for i in range(len(found) - 1))


def test_haversine_matches_known_city_distances():
    assert haversine_km(52.52, 13.405, 48.8566, 2.3522) == pytest.approx(878, abs=3)  # Berlin-Paris
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371.0088)


def test_tier_vram_model_and_zone_filters(nodes):
    c = Constraints(M, tier=(4, 6), min_free_vram_gb=24, zone="eu", k=100)
    found = {x.node_id for x in candidates(nodes, c)}
    expected = {n.node_id for n in nodes if 4 <= n.tier <= 6 and n.vram_free_gb >= 24
                and n.zone == "eu" and n.models[0].name == M}
    assert found == expected and found
    assert candidates(nodes, Constraints("no-such-model", k=100)) == []


def test_a_node_without_coordinates_fails_a_distance_limit_and_ranks_last_without_one():
    located, nowhere = node("a", lat=52.5, lon=13.4), node("b")
    assert [c.node_id for c in candidates([nowhere, located],
                                          Constraints(M, near=BERLIN, within_km=10_000))] == ["a"]
    assert [c.node_id for c in candidates([nowhere, located], Constraints(M, near=BERLIN))] == \
        ["a", "b"]


def test_a_private_subcloud_node_is_never_a_candidate_nor_planned():
    private = node("private", lat=48.2, lon=16.4, tier=6).model_copy(
        update={"public": False, "subcloud": "acme"})
    assert candidates([private], Constraints(M, near=BERLIN)) == []
    assert plan(Policy(), [private], M, "eu", (48.2, 16.4), 4000, 100) == Plan("global")
    assert plan(Policy(), [private], M, "eu", None, 10, 10) == Plan("global")


def test_k_limits_the_answer_to_the_best(nodes):
    everything = candidates(nodes, Constraints(M, near=BERLIN, k=100))
    assert candidates(nodes, Constraints(M, near=BERLIN, k=3)) == everything[:3]


def test_order_is_deterministic_whatever_the_input_order(nodes):
    shuffled = nodes[:]
    random.Random(1).shuffle(shuffled)
    for c in (Constraints(M, near=BERLIN, k=100), Constraints(M, k=100)):
        assert candidates(shuffled, c) == candidates(nodes, c)


def test_without_near_least_loaded_then_highest_tier_then_node_id():
    ns = [node("d", load=1, tier=6), node("c", tier=2), node("b", tier=5), node("a", tier=5)]
    assert [c.node_id for c in candidates(ns, Constraints(M))] == ["a", "b", "c", "d"]


def test_query_parsing():
    c = parse_query({"model": M, "near": "52.5, 13.4", "within_km": "50", "tier": "4-6",
                     "min_free_vram_gb": "8", "k": "7", "zone": "EU"})
    assert c == Constraints(M, near=(52.5, 13.4), within_km=50, tier=(4, 6), min_free_vram_gb=8,
                            k=7, zone="eu")
    assert parse_query({"model": M, "tier": "5"}).tier == (5, 5)
    assert parse_query({"model": M, "zone": "global"}).zone is None


@pytest.mark.parametrize("params,param", [
    ({}, "model"),
    ({"model": M, "near": "52.5"}, "near"),
    ({"model": M, "near": "91,0"}, "near"),
    ({"model": M, "near": "x,y"}, "near"),
    ({"model": M, "near": "nan,0"}, "near"),
    ({"model": M, "within_km": "50"}, "within_km"),  # no point to measure from
    ({"model": M, "near": "1,1", "within_km": "-1"}, "within_km"),
    ({"model": M, "tier": "7"}, "tier"),
    ({"model": M, "tier": "6-4"}, "tier"),
    ({"model": M, "tier": "high"}, "tier"),
    ({"model": M, "min_free_vram_gb": "lots"}, "min_free_vram_gb"),
    ({"model": M, "k": "0"}, "k"),
    ({"model": M, "k": "101"}, "k"),
    ({"model": M, "k": "2.5"}, "k"),
    ({"model": M, "zone": "mars"}, "zone"),
])
def test_bad_query_values_are_a_400_naming_the_parameter(params, param):
    with pytest.raises(APIError) as err:
        parse_query(params)
    assert (err.value.status, err.value.code, err.value.param) == (400, "invalid_constraint", param)
    assert param in err.value.message


def test_chat_headers_give_constraints_only_when_sent():
    assert parse_headers({}, M) is None
    c = parse_headers({"x-inferbus-near": "52.5,13.4", "x-inferbus-within-km": "25",
                       "x-inferbus-tier": "4-6"}, M)
    assert c == Constraints(M, near=(52.5, 13.4), within_km=25, tier=(4, 6))
    with pytest.raises(APIError) as err:
        parse_headers({"x-inferbus-tier": "9"}, M)
    assert err.value.status == 400 and err.value.param == "x-inferbus-tier"


# --- policy ----------------------------------------------------------------------------------

POLICY = Policy()
VIENNA = (48.21, 16.37)


def test_a_heavy_job_goes_to_tier_4_and_up_least_loaded_first():
    ns = [node("small", tier=2, lat=48.2, lon=16.4), node("busy6", tier=6, load=3),
          node("idle4", tier=4, lat=10, lon=10), node("idle5", tier=5, lat=48, lon=16)]
    p = plan(POLICY, ns, M, "eu", VIENNA, prompt_tokens_bound=4000, max_tokens=100)
    assert p == Plan("nodes", nodes=("idle5", "idle4", "busy6"), reason="heavy")
    assert plan(POLICY, ns, M, "eu", None, 10, max_tokens=1024).nodes == \
        ("idle4", "idle5", "busy6")  # max_tokens alone makes it heavy; no location: by node id


def test_a_heavy_job_without_strong_nodes_is_routed_normally():
    ns = [node("small", tier=3)]
    assert plan(POLICY, ns, M, "eu", None, 4000, 100) == Plan("zone", zone="eu", reason="zone")


def test_a_small_job_from_a_known_place_goes_to_the_nearest_nodes_of_its_zone():
    ns = [node("me-next-door", zone="me", lat=48.21, lon=16.37),  # nearest, but another zone
          node("eu-far", lat=40.4, lon=-3.7), node("eu-near", lat=48.1, lon=16.0),
          node("eu-mid", lat=50.1, lon=14.4), node("eu-farthest", lat=38.7, lon=-9.1),
          node("eu-unlocated")]
    p = plan(POLICY, ns, M, "eu", VIENNA, 100, 100)
    assert p == Plan("nodes", nodes=("eu-near", "eu-mid", "eu-far"), reason="nearest")


def test_a_small_job_whose_zone_has_no_node_goes_to_the_nearest_anywhere():
    ns = [node("far", zone="na", lat=40.7, lon=-74), node("near", zone="me", lat=41, lon=29)]
    assert plan(POLICY, ns, M, "af", (30.0, 31.2), 100, 100).nodes == ("near", "far")


def test_without_a_location_the_zone_queue_else_the_global_queue():
    ns = [node("eu1"), node("na-other", zone="na", models=("other",))]
    assert plan(POLICY, ns, M, "eu", None, 100, 100) == Plan("zone", zone="eu", reason="zone")
    assert plan(POLICY, ns, M, "na", None, 100, 100) == Plan("global", reason="global")
    assert plan(POLICY, [], M, "eu", VIENNA, 100, 100) == Plan("global", reason="global")


def test_constraints_that_no_node_meets_give_an_empty_node_plan():
    ns = [node("eu1", lat=48.2, lon=16.4, tier=2)]
    wanted = Constraints(M, near=VIENNA, within_km=50, tier=(5, 6))
    assert plan(POLICY, ns, M, "eu", None, 100, 100, wanted) == Plan("nodes", reason="constraints")
    ok = Constraints(M, near=VIENNA, within_km=50)
    assert plan(POLICY, ns, M, "eu", None, 100, 100, ok).nodes == ("eu1",)
