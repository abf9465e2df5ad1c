"""Memory.held_refusal: a child a policy or RBAC refused is not asked again before its hold is
over, unless its manifest changed."""

from __future__ import annotations

from typing import Any

import pytest

from kubemaas_operator import memory as memory_module
from kubemaas_operator.memory import Memory
from kubemaas_operator.render import SPEC_HASH


def _child(spec_hash: str = "h1") -> dict[str, Any]:
    return {"kind": "Deployment",
            "metadata": {"namespace": "ns", "name": "m", "annotations": {SPEC_HASH: spec_hash}}}


def test_a_refusal_is_held_until_its_time_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(memory_module.time, "monotonic", lambda: now[0])
    memory = Memory()
    assert memory.held_refusal(_child(), 3.0) is None
    memory.hold_refusal(_child(), "Refused", "denied")
    now[0] += 2.9
    assert memory.held_refusal(_child(), 3.0) == ("Refused", "denied")
    now[0] += 0.2
    assert memory.held_refusal(_child(), 3.0) is None


def test_a_changed_manifest_or_a_forgotten_model_is_asked_at_once() -> None:
    memory = Memory()
    memory.hold_refusal(_child(), "Forbidden", "rbac")
    assert memory.held_refusal(_child(), 60.0) == ("Forbidden", "rbac")
    assert memory.held_refusal(_child("h2"), 60.0) is None
    memory.forget_all("ns", "m")
    assert memory.held_refusal(_child(), 60.0) is None
