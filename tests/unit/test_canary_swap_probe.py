"""Generated, seeded cases of a third revision of the same pod size arriving mid-canary (the
in-place swap, canary.swap_strategy), driven over passes against tests/unit/rollout_sim.py:
replicas 1-10, maxUnavailable 0-3, 1 or 2 GPUs per canary pod, 0-3 GPUs free, old or new canary
pods that never become Ready, pods Ready late, a canary pod deleted by hand, status writes lost
(one pass in ten: the next reads the status before it, as after a failed write). The plan
settles, never more GPUs bound than there are, the canary ends all on the new revision (or the
new revision, when its pods crash, is rolled back with the canary gone), and without a crash or
a hand deletion the model's Ready replicas stay at or above the floor. Pure."""

from __future__ import annotations

import random
from typing import Any

import pytest
from tests.unit.rollout_sim import Sim
from tests.unit.test_canary_swap_room import spec

from kubemaas_operator.canary import slack


def _case(seed: int) -> list[str]:
    """What went wrong in one generated case (empty: nothing, or not a swap)."""
    rnd = random.Random(seed)
    replicas, unavailable = rnd.randint(1, 10), rnd.randint(0, 3)
    gpus, free, late = rnd.choice([1, 2]), rnd.randint(0, 3), rnd.choice([0, 0, 1, 3])
    s = Sim(gpus=replicas + free, sizes={"aaa": 1, "bbb": gpus, "ccc": gpus}, late=late,
            main_n=replicas)
    s.scale("main", "aaa", replicas)
    for _ in range(4):
        s.settle()
    status: dict[str, Any] = {"current": {"number": 1, "hash": "aaa"},
                              "stableSpec": spec(replicas, unavailable, 1, "img:1")}
    old = spec(replicas, unavailable, gpus, "img:2")
    for _ in range(rnd.randint(3, 10)):
        p = s.look(old, "bbb", replicas, status)
        status = p.status
        s.apply(p, "bbb", replicas)
        s.settle()
    if not [q for q in s.pods if q.track == "canary"] or status.get("failed"):
        return []
    crashed_old = rnd.random() < 0.3
    for q in s.pods:
        if crashed_old and q.track == "canary" and rnd.random() < 0.6:
            q.broken, q.ready = True, False
    crashed_new = rnd.random() < 0.15
    if crashed_new:
        s.broken.add("ccc")
    delete_at = rnd.choice([None, None, rnd.randint(0, 8)])
    new = spec(replicas, unavailable, gpus, "img:3")
    floor = min(replicas - slack(replicas, 0, unavailable, gpus), s.ready())
    lowest, seen = s.ready(), []
    lost = random.Random(f"lost {seed}")  # its own stream: the cases stay those drawn before
    for i in range(60):
        if i == delete_at and [q for q in s.pods if q.track == "canary"]:
            s.pods.remove(rnd.choice([q for q in s.pods if q.track == "canary"]))
        p = s.look(new, "ccc", replicas, status)
        if lost.random() >= 0.1:  # else the write is lost: the next pass reads `status`
            status = p.status
        seen.append((p.target, p.main_replicas, p.canary_replicas, p.status.get("reason"),
                     sorted((q.track, q.revision, q.ready) for q in s.pods)))
        s.apply(p, "ccc", replicas)
        lowest = min(lowest, s.ready())
        s.settle()
        if sum(q.gpus for q in s.pods if q.bound) > s.gpus:
            return ["more GPUs bound than there are"]
    wrong = []
    if any(x != seen[-1] for x in seen[-5:]):
        wrong.append("no settle")
    canary = [q for q in s.pods if q.track == "canary"]
    if status.get("failed"):
        if not crashed_new:
            wrong.append(f"a healthy revision rolled back: {status['message']}")
        if canary:
            wrong.append("a canary left after the rollback")
    elif any(q.revision != "ccc" or not q.ready for q in canary) and (
            status.get("reason") != "CanaryNeedsGPUs"):
        wrong.append(f"the canary not replaced: {status.get('reason')}")
    if not (crashed_old or crashed_new or delete_at is not None or late) and lowest < floor:
        wrong.append(f"Ready {lowest} below the floor {floor}")
    return wrong


@pytest.mark.parametrize("first", range(0, 80, 20))
def test_generated_swaps_keep_the_invariants(first: int) -> None:
    cases = {seed: _case(seed) for seed in range(first, first + 20)}
    assert {seed: wrong for seed, wrong in cases.items() if wrong} == {}
