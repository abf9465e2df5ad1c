"""A canary of larger pods that gives its replicas back (the spec gone back, an abort, or a
canary dropped for autoscaling) while some GPUs are free, but fewer than its pods hold: the
stable side cannot grow to every replica beside it, so the canary goes within the slack first.
Pure: rollout.plan driven over passes against tests/unit/rollout_sim.py."""

from __future__ import annotations

from typing import Any

from tests.unit.rollout_sim import Sim
from tests.unit.test_canary_gpu_ratio import STEPS
from tests.unit.test_rollout_canary import CANARY_RAW

from kubemaas_operator.canary import give_back

AAA = {**CANARY_RAW, "replicas": 10, "rollout": {"maxUnavailable": 1, "canary": STEPS}}
MID = {"current": {"number": 1, "hash": "aaa"}, "stableSpec": AAA,
       "update": {"number": 2, "hash": "bbb"},
       "canary": {"hash": "bbb", "step": 1, "steps": 2, "replicas": 10}}


def mid_canary() -> Sim:
    """10 x 1 GPU on 13 GPUs, maxUnavailable 1: bbb's canary runs 3 Ready pods of 2 GPUs beside
    7 stable replicas (13 GPUs held, 3 free beyond the 10 replicas were the canary gone)."""
    s = Sim(gpus=13, sizes={"aaa": 1, "bbb": 2, "ccc": 1}, main_n=7)
    s.scale("main", "aaa", 7)
    for _ in range(3):
        s.add("canary", "bbb")
    s.settle()
    s.settle()
    assert s.ready() == 10 and s.free() == 0
    return s


def drive(s: Sim, raw: dict[str, Any], revision: str, desired: int | None,
          passes: int = 30, status: dict[str, Any] = MID) -> tuple[dict[str, Any], int]:
    """Sim.run with this file's mid-canary status by default."""
    return s.run(raw, revision, desired, status, passes)


def test_give_back_counts_the_free_room_in_canary_pods() -> None:
    # 3 free beyond the 10 replicas, 3 canary pods of 2 GPUs: 7 stable fit beside them (was
    # 10, three of them Pending for good), and one canary pod may go (maxUnavailable 1)
    assert give_back(10, 3, 3, 7, 1, ratio=2, units=13) == (7, 2)
    assert give_back(10, 6, 3, 7, 1, ratio=2, units=13) == (10, 3)  # room for both: as before
    assert give_back(10, 3, 3, 7, 1) == (10, 3)  # pods of the stable size: as before


def test_a_spec_gone_back_gives_a_larger_canary_back_with_some_gpus_free() -> None:
    """The spec goes back to aaa: the stable Deployment was asked for all 10 replicas beside the
    canary's 6 GPUs (16 on 13), its 3 new pods Pending, and the canary waited for them to be
    Ready: neither moved, for good. Now one canary pod goes at a time within maxUnavailable."""
    s = mid_canary()
    status, lowest = drive(s, AAA, "aaa", 10)
    assert not [q for q in s.pods if q.track == "canary"] and "canary" not in status
    assert sorted((q.revision, q.ready) for q in s.pods) == [("aaa", True)] * 10
    assert lowest >= 9 and status["reason"] == "UpToDate"


def test_a_canary_dropped_for_autoscaling_with_a_new_revision_and_some_gpus_free() -> None:
    """The same canary dropped for autoscaling in the same edit as revision ccc (1 GPU pods):
    it gives its replicas back (CanaryGivesBack), then ccc rolls to the rollout's 10."""
    s = mid_canary()
    auto = {k: v for k, v in AAA.items() if k not in ("rollout", "replicas")}
    auto["rollout"] = {"maxUnavailable": 1}
    auto["autoscaling"] = {"signal": "queue", "target": 4, "minReplicas": 1, "maxReplicas": 12}
    auto["runtime"] = {"image": "img:3"}
    status, lowest = drive(s, auto, "ccc", None, 60)
    assert not [q for q in s.pods if q.track == "canary"] and "canary" not in status
    assert sorted((q.revision, q.ready) for q in s.pods) == [("ccc", True)] * 10
    assert lowest >= 9 and status["reason"] == "UpToDate"


def test_a_surge_strategy_chosen_for_the_free_gpus_keeps_max_unavailable_for_the_canary() -> None:
    """9 x 1 GPU on 10 GPUs, maxUnavailable 2: 2 canary pods of 2 GPUs Ready beside 6 stable
    replicas. The spec goes back: the GPU free beyond 9 replicas made the strategy a surge
    (maxUnavailable 0), so no canary pod could go (8 Ready, floor 9 - 1) and the stable side
    could not grow beside them: neither moved, for good. The spec's maxUnavailable 2 lets one
    canary pod go at a time."""
    s = Sim(gpus=10, sizes={"aaa": 1, "bbb": 2}, main_n=6)
    s.scale("main", "aaa", 6)
    for _ in range(2):
        s.add("canary", "bbb")
    s.settle()
    s.settle()
    r = {**AAA, "replicas": 9, "rollout": {"maxUnavailable": 2, "canary": STEPS}}
    mid = {**MID, "stableSpec": r, "canary": {**MID["canary"], "replicas": 9}}
    status, lowest = drive(s, r, "aaa", 9, status=mid)
    assert not [q for q in s.pods if q.track == "canary"] and "canary" not in status
    assert sorted((q.revision, q.ready) for q in s.pods) == [("aaa", True)] * 9
    assert lowest >= 7 and status["reason"] == "UpToDate"
