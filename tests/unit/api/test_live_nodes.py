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
