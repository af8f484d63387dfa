"""The API's live-node view: liveness by heartbeat age, and crashed nodes forgotten."""
from api.live_nodes import FORGET_S, LIVE_S, LiveNodes
from bus.node_record import ModelInfo, NodeRecord


def node(node_id: str, zone: str = "eu") -> NodeRecord:
    return NodeRecord(node_id=node_id, zone=zone, operator="op",
                      models=(ModelInfo(name="m", context_length=512),))


def test_node_leaves_the_live_view_when_its_heartbeats_stop():
    now = [100.0]
    view = LiveNodes(clock=lambda: now[0])
    view.update(node("a"))
    assert [n.node_id for n in view.live()] == ["a"] and "m" in view.models()
    now[0] += LIVE_S + 0.01
    assert view.live() == [] and "m" not in view.models()
    assert view.was_seen("m")  # known model, no capacity now: a 503, not a 404


def test_crashed_nodes_are_forgotten_so_the_view_stays_small():
    now = [0.0]
    view = LiveNodes(clock=lambda: now[0])
    for i in range(100):
        view.update(node(f"n{i}"))
    now[0] += FORGET_S + 1
    view.update(node("alive"))
    view.live()
    assert list(view._nodes) == ["alive"]


def _grants(*grants):
    from bus.grants import GrantBook
    book = GrantBook()
    for g in grants:
        book.apply(g.node_id, g.model_dump_json().encode())
    return book


def test_a_heartbeat_is_believed_only_under_its_own_key_and_within_its_grant():
    from bus.grants import NodeGrant
    from bus.node_record import ModelInfo, NodeRecord
    mine, other = "a" * 64, "b" * 64
    grant = NodeGrant(node_id=mine, node_name="n", operator="op", zone="eu", models=("m",),
                      tier=2)
    nodes = LiveNodes(grants=_grants(grant))
    boast = NodeRecord(node_id=other, zone="na", operator="thief", tier=6,
                       models=(ModelInfo(name="m", context_length=8),
                               ModelInfo(name="big", context_length=8)))
    believed = nodes.narrowed(mine, boast)  # put under its own key, claiming another's id
    assert (believed.node_id, believed.zone, believed.operator, believed.tier) == (
        mine, "eu", "op", 2)
    assert [m.name for m in believed.models] == ["m"]  # what it reports and was granted
    assert nodes.narrowed(other, boast) is None  # no grant: not a node of the network


def test_a_suspended_node_leaves_the_live_view_at_once():
    from bus.grants import NodeGrant
    from bus.node_record import NodeRecord
    grant = NodeGrant(node_id="a" * 64, node_name="n", operator="op", zone="eu", models=("m",))
    book = _grants(grant)
    nodes = LiveNodes(grants=book)
    nodes.update(NodeRecord(node_id=grant.node_id, zone="eu", operator="op"))
    assert len(nodes.live()) == 1
    book.apply(grant.node_id, grant.model_copy(update={"status": "suspended"})
               .model_dump_json().encode())
    assert nodes.live() == []


def test_a_nodes_standing_comes_from_its_grant_and_suspended_ones_are_counted():
    from bus.grants import NodeGrant
    from bus.node_record import NodeRecord
    on_probation = NodeGrant(node_id="a" * 64, node_name="n", operator="op", zone="eu",
                             models=("m",), status="probation")
    gone = on_probation.model_copy(update={"node_id": "b" * 64, "status": "suspended"})
    nodes = LiveNodes(grants=_grants(on_probation, gone))
    boast = NodeRecord(node_id="a" * 64, zone="eu", operator="op", standing="verified")
    assert nodes.narrowed("a" * 64, boast).standing == "probation"
    assert nodes.standings() == {"probation": 1, "suspended": 1}


def _located(location: str, node_id: str):
    from bus.grants import NodeGrant
    return NodeGrant(node_id=node_id, node_name="n", operator="op", zone="eu", models=("m",),
                     location=location, location_note=f"{location}: why")


def test_declared_coordinates_are_believed_only_where_the_location_checked_out():
    from bus.node_record import NodeRecord
    grants = [_located(where, c * 64) for where, c in
              (("verified", "a"), ("unchecked", "b"), ("failed", "c"))]

    def coordinates(checking: bool) -> dict:
        nodes = LiveNodes(grants=_grants(*grants), check_locations=checking)
        return {g.location: nodes.narrowed(g.node_id, NodeRecord(
            node_id=g.node_id, zone="eu", operator="op", lat=52.5, lon=13.4)).lat
            for g in grants}
    assert coordinates(True) == {"verified": 52.5, "unchecked": None, "failed": None}
    # A network that does not check still refuses the word of a node that failed.
    assert coordinates(False) == {"verified": 52.5, "unchecked": 52.5, "failed": None}
    assert LiveNodes(grants=_grants(*grants)).locations()["c" * 64] == ("failed", "failed: why")


def test_a_node_whose_location_failed_is_never_dispatched_by_distance():
    from api.discovery import Constraints, Plan, Policy, candidates, plan
    from bus.node_record import ModelInfo, NodeRecord
    grants = [_located("verified", "a" * 64), _located("failed", "c" * 64)]
    nodes = LiveNodes(grants=_grants(*grants), check_locations=True)
    for g, (lat, lon) in zip(grants, ((52.0, 13.0), (52.5, 13.4))):  # the liar claims nearer
        nodes.update(nodes.narrowed(g.node_id, NodeRecord(
            node_id=g.node_id, zone="eu", operator="op", lat=lat, lon=lon,
            models=(ModelInfo(name="m", context_length=512),))))
    berlin = (52.52, 13.405)
    near = candidates(nodes.live(), Constraints("m", near=berlin, within_km=500))
    assert [c.node_id for c in near] == ["a" * 64]
    assert plan(Policy(), nodes.live(), "m", "eu", berlin, 10, 10) == \
        Plan("nodes", nodes=("a" * 64,), reason="nearest")
