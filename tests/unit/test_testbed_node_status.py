"""When the real node counts as up: Ready, and no not-ready taint from the node controller,
for longer than one of the controller's passes."""

from __future__ import annotations

from typing import Any

from kubemaas_testbed.node_config import TAINT
from kubemaas_testbed.node_status import Settling, is_ready, lifecycle_taints

NOT_READY_TAINT = {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}


def node(ready: str, *taints: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"taints": list(taints)},
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                      {"type": "Ready", "status": ready}]}}


def test_ready_and_lifecycle_taints_are_read_from_the_node() -> None:
    assert is_ready(node("True"))
    assert not is_ready(node("False")) and not is_ready(node("Unknown"))
    assert not is_ready({"metadata": {"name": "registering"}})
    assert lifecycle_taints(node("True", TAINT)) == []  # our own taint is not the controller's
    assert lifecycle_taints(node("True", TAINT, NOT_READY_TAINT)) == [NOT_READY_TAINT]


def test_settled_only_after_the_settle_time_without_a_break() -> None:
    now = [0.0]
    settled = Settling(settle_s=6.0, clock=lambda: now[0])
    assert not settled(None)
    assert not settled(node("False", TAINT))
    assert not settled(node("True", TAINT))  # Ready from t=0
    now[0] = 3.0
    # the controller's taint, late: the wait starts again once it is lifted
    assert not settled(node("True", TAINT, NOT_READY_TAINT))
    now[0] = 5.0
    assert not settled(node("True", TAINT))
    now[0] = 10.9
    assert not settled(node("True", TAINT))
    now[0] = 11.0
    assert settled(node("True", TAINT))
