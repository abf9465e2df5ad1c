"""rollout.py with spec.rollout.canary: steps, promotion, abort, a canary at zero replicas or
without a free GPU, and a spec reverted mid-canary (pure)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from tests.unit.test_rollout import GOOD, NOW, RAW, dep, pods

from kubemaas_operator.api import ModelDeploymentSpec, SpecError, parse_spec
from kubemaas_operator.observed import PodInfo
from kubemaas_operator.rollout import plan

CANARY_RAW = {**RAW, "replicas": 10, "rollout": {"canary": {"steps": [
    {"weight": 10, "pauseSeconds": 5}, {"weight": 50}, {"weight": 100, "pauseSeconds": 0}]}}}


def canary_pods(old: int, new: int, new_ready: bool = True) -> list[PodInfo]:
    return [*pods("aaa", old), *[PodInfo(name=f"c{i}", phase="Running", node="n",
                                         ready=new_ready, revision="bbb", track="canary")
                                 for i in range(new)]]


def switched_to_autoscaling() -> tuple[dict[str, Any], dict[str, Any], ModelDeploymentSpec]:
    """The status mid-canary (bbb's canary at step 2 of 3, the rollout at 10 replicas), and a
    spec with spec.rollout.canary removed and spec.autoscaling added (raw and parsed)."""
    mid = {**GOOD, "stableSpec": CANARY_RAW, "update": {"number": 2, "hash": "bbb"},
           "canary": {"hash": "bbb", "step": 2, "steps": 3, "replicas": 10}}
    auto = {k: v for k, v in CANARY_RAW.items() if k not in ("rollout", "replicas")}
    auto["autoscaling"] = {"signal": "queue", "target": 4, "minReplicas": 1, "maxReplicas": 12}
    return mid, auto, parse_spec(auto)


def test_canary_steps_move_replicas_and_wait_for_promotion() -> None:
    s = parse_spec(CANARY_RAW)
    good = {**GOOD, "stableSpec": CANARY_RAW}
    p = plan(s, CANARY_RAW, "bbb", dep("aaa", 10, 10, 10), pods("aaa", 10), 10, 0, good, NOW)
    assert p.target == "stable" and (p.main_replicas, p.canary_replicas) == (9, 0)
    assert p.view.strategy_reason == "CanaryRollout" and p.status["canary"]["step"] == 1
    # the stable Deployment gave one GPU back: the canary may take it
    p = plan(s, CANARY_RAW, "bbb", dep("aaa", 9, 9, 9), pods("aaa", 9), 10, 0, p.status, NOW)
    assert p.canary_replicas == 1
    p = plan(s, CANARY_RAW, "bbb", dep("aaa", 9, 9, 9), canary_pods(9, 1), 10, 0, p.status, NOW)
    assert p.status["canary"]["trafficPercent"] == 10 and "next step in 5s" in p.status["message"]
    later = NOW + timedelta(seconds=6)
    p = plan(s, CANARY_RAW, "bbb", dep("aaa", 9, 9, 9), canary_pods(9, 1), 10, 0, p.status, later)
    assert p.status["canary"]["step"] == 2
    p = plan(s, CANARY_RAW, "bbb", dep("aaa", 9, 9, 9), canary_pods(9, 1), 10, 0, p.status, later)
    # the stable Deployment shrinks only as canary replicas become Ready (maxUnavailable 1)
    assert (p.main_replicas, p.status["canary"]["weight"]) == (8, 50)
    p = plan(s, CANARY_RAW, "bbb", dep("aaa", 7, 7, 7), canary_pods(7, 3), 10, 0, p.status, later)
    assert (p.main_replicas, p.canary_replicas) == (6, 3)
    p = plan(s, CANARY_RAW, "bbb", dep("aaa", 5, 5, 5), canary_pods(5, 5), 10, 0, p.status, later)
    assert "set spec.rollout.canary.promote to 2" in p.status["message"]
    assert p.status["canary"]["step"] == 2  # manual gate
    promoted = parse_spec({**CANARY_RAW, "rollout": {"canary": {
        **CANARY_RAW["rollout"]["canary"], "promote": 2}}})
    p = plan(promoted, CANARY_RAW, "bbb", dep("aaa", 5, 5, 5), canary_pods(5, 5), 10, 0,
             p.status, later)
    assert p.target == "desired" and p.status["canary"]["step"] == 4
    # hand-over: the stable Deployment takes the new template; the canary shrinks as it is Ready
    assert (p.main_replicas, p.canary_replicas) == (5, 5)
    handed = [*pods("bbb", 5), *canary_pods(0, 5)]
    p = plan(promoted, CANARY_RAW, "bbb", dep("bbb", 5, 5, 5), handed, 10, 0, p.status, later)
    assert (p.main_replicas, p.canary_replicas) == (5, 4)  # one at a time: 9 stay Ready
    p = plan(promoted, CANARY_RAW, "bbb", dep("bbb", 10, 10, 10), pods("bbb", 10), 10, 0,
             p.status, later)
    assert p.canary_replicas is None and p.status["current"]["number"] == 2


def test_canary_abort_and_failure() -> None:
    s = parse_spec(CANARY_RAW)
    good = {**GOOD, "stableSpec": CANARY_RAW}
    aborted = parse_spec({**CANARY_RAW, "rollout": {"canary": {
        **CANARY_RAW["rollout"]["canary"], "abort": True}}})
    p = plan(aborted, CANARY_RAW, "bbb", dep("aaa", 9, 9, 9), canary_pods(9, 1), 10, 0, good,
             NOW)
    # no free GPU: the stable Deployment grows as the canary shrinks, one replica short at most
    assert p.target == "stable" and (p.main_replicas, p.canary_replicas) == (9, 0)
    assert p.view.blocked_reason == "CanaryAborted"
    p = plan(aborted, CANARY_RAW, "bbb", dep("aaa", 10, 10, 10), pods("aaa", 10), 10, 0,
             p.status, NOW)
    assert p.canary_replicas is None and p.main_replicas == 10  # the canary Deployment goes
    crashed = [*pods("aaa", 9), PodInfo(name="c", phase="Running", revision="bbb",
                                        track="canary", waiting_reason="CrashLoopBackOff")]
    p = plan(s, CANARY_RAW, "bbb", dep("aaa", 9, 9, 9), crashed, 10, 0, good, NOW)
    assert p.rolled_back and p.canary_replicas is None and p.main_replicas is None


def test_a_canary_of_a_model_at_zero_replicas_starts_no_pod() -> None:
    """replicas 0 (or scaled to 0 mid-canary): no canary pod, never a negative count."""
    zero = {**CANARY_RAW, "replicas": 0}
    good = {**GOOD, "stableSpec": zero}
    for spare in (0, 2):
        p = plan(parse_spec(zero), zero, "bbb", dep("aaa", 0, 0, 0), [], 0, spare, good, NOW)
        assert p.canary_replicas is None and p.main_replicas is None and p.target == "desired"
    s = parse_spec(CANARY_RAW)
    p = plan(s, CANARY_RAW, "bbb", dep("aaa", 9, 9, 9), canary_pods(9, 1), 10, 0,
             {**GOOD, "stableSpec": CANARY_RAW}, NOW)
    assert p.status["canary"]["step"] == 1
    p = plan(parse_spec(zero), zero, "bbb", dep("aaa", 0, 0, 0), canary_pods(0, 1), 0, 0,
             p.status, NOW)
    assert p.canary_replicas is None and p.main_replicas is None and p.target == "desired"
    assert "canary" not in p.status


def test_a_canary_without_a_free_gpu_does_not_take_the_only_replica_down() -> None:
    """One replica, no free GPU, no allowDowntime: a canary waits as any rollout does (the
    stable replica is not scaled to 0 before a canary replica is Ready)."""
    one = {**CANARY_RAW, "replicas": 1}
    good = {**GOOD, "stableSpec": one}
    p = plan(parse_spec(one), one, "bbb", dep("aaa", 1, 1, 1), pods("aaa", 1), 1, 0, good, NOW)
    assert p.target == "hold" and p.view.blocked_reason == "RolloutWaiting"
    assert p.main_replicas is None and p.canary_replicas is None
    assert "allowDowntime" in p.view.blocked_message
    # maxUnavailable 0 on a full cluster: no stable replica may go either
    strict = {**CANARY_RAW, "rollout": {**CANARY_RAW["rollout"], "maxUnavailable": 0}}
    p = plan(parse_spec(strict), strict, "bbb", dep("aaa", 10, 10, 10), pods("aaa", 10), 10, 0,
             {**GOOD, "stableSpec": strict}, NOW)
    assert p.target == "hold" and p.main_replicas is None
    # allowed downtime, or a free GPU: the canary goes ahead
    down = {**one, "rollout": {**one["rollout"], "allowDowntime": True}}
    p = plan(parse_spec(down), down, "bbb", dep("aaa", 1, 1, 1), pods("aaa", 1), 1, 0,
             {**GOOD, "stableSpec": down}, NOW)
    assert p.view.strategy_reason == "CanaryRollout" and p.main_replicas == 0
    p = plan(parse_spec(one), one, "bbb", dep("aaa", 1, 1, 1), pods("aaa", 1), 1, 1, good, NOW)
    assert (p.main_replicas, p.canary_replicas) == (1, 1)


def test_a_spec_reverted_mid_canary_gives_the_canary_replicas_back_gradually() -> None:
    """Going back to the current revision while 5 of 10 replicas run the canary: the canary
    shrinks only as the stable Deployment's replicas come back Ready (as an abort does), not all
    at once (10 Ready -> 5)."""
    s = parse_spec(CANARY_RAW)
    mid = {**GOOD, "stableSpec": CANARY_RAW, "update": {"number": 2, "hash": "bbb"},
           "canary": {"hash": "bbb", "step": 2, "steps": 3}}
    p = plan(s, CANARY_RAW, "aaa", dep("aaa", 5, 5, 5), canary_pods(5, 5), 10, 0, mid, NOW)
    assert p.target == "desired" and (p.main_replicas, p.canary_replicas) == (5, 4)
    assert p.hold_canary_template  # its pods keep their revision while they go
    assert p.status["history"][-1]["outcome"] == "Superseded"
    assert p.view.strategy_reason == "CanaryRollout" and "went back" in p.view.strategy_message
    assert p.status["reason"] == "CanaryGivesBack" and p.status["current"]["number"] == 1
    p = plan(s, CANARY_RAW, "aaa", dep("aaa", 6, 6, 6), canary_pods(6, 4), 10, 0, p.status, NOW)
    assert (p.main_replicas, p.canary_replicas) == (6, 3)
    p = plan(s, CANARY_RAW, "aaa", dep("aaa", 10, 10, 10), pods("aaa", 10), 10, 0, p.status,
             NOW)
    assert p.canary_replicas is None and p.main_replicas is None


def test_a_canary_dropped_for_autoscaling_is_promoted_not_deleted() -> None:
    """Switching to autoscaling mid-canary (spec.rollout.canary removed, as the CEL rule asks,
    and spec.autoscaling added; the revision unchanged): the canary's Ready replicas stay until
    the stable Deployment's new ones are Ready, as a promotion does, and the status says why it
    ended (it was deleted at once: 10 Ready -> 4, nothing said)."""
    mid, auto, s = switched_to_autoscaling()
    # desired (the autoscaler's: the stable Deployment's 5) is the canary's 10 until it is done
    # (`spare`, the room beyond the autoscaler's 5, is the canary's: no more pods than GPUs)
    p = plan(s, auto, "bbb", dep("aaa", 5, 5, 5), canary_pods(5, 5), 5, 5, mid, NOW)
    assert p.target == "desired" and (p.main_replicas, p.canary_replicas) == (5, 5)
    assert "spec.rollout.canary was removed" in p.view.strategy_message
    assert "promoted" in p.status["message"] and p.status["canary"]["step"] == 4
    handed = [*pods("bbb", 5), *canary_pods(0, 5)]
    p = plan(s, auto, "bbb", dep("bbb", 5, 5, 5), handed, 5, 0, p.status, NOW)
    assert (p.main_replicas, p.canary_replicas) == (5, 4)  # one at a time: 9 stay Ready
    assert p.status["canary"]["replicas"] == 10
    # the canary gave one up: the stable Deployment grows into it, toward all 10
    p = plan(s, auto, "bbb", dep("bbb", 5, 5, 5), [*pods("bbb", 5), *canary_pods(0, 4)], 5, 0,
             p.status, NOW)
    assert p.main_replicas == 6
    p = plan(s, auto, "bbb", dep("bbb", 10, 10, 10), pods("bbb", 10), 10, 0, p.status, NOW)
    assert p.canary_replicas is None and p.main_replicas is None
    assert p.status["current"]["number"] == 2
    assert "spec.rollout.canary was removed" in p.status["history"][-1]["message"]


def test_a_canary_dropped_for_autoscaling_with_a_new_revision_gives_its_replicas_back() -> None:
    """Switching to autoscaling mid-canary in the same edit as a change of the pods (revision
    ccc): the canary of bbb, which the spec left, gave its Ready replicas up at once (10 Ready
    -> 5) as ccc rolled over the stable Deployment. Now it gives them back as a revert does,
    one at a time as the stable revision's replicas come back Ready, then ccc rolls."""
    mid, auto, s = switched_to_autoscaling()
    p = plan(s, auto, "ccc", dep("aaa", 5, 5, 5), canary_pods(5, 5), 5, 5, mid, NOW)
    assert p.target == "stable" and (p.main_replicas, p.canary_replicas) == (5, 4)
    assert p.hold_canary_template and p.status["reason"] == "CanaryGivesBack"
    assert "spec.rollout.canary was removed" in p.status["message"]
    assert "(revision 1, 5 of 10 Ready), then revision 3 rolls" in p.status["message"]
    p = plan(s, auto, "ccc", dep("aaa", 5, 5, 5), canary_pods(5, 4), 5, 5, p.status, NOW)
    assert (p.main_replicas, p.canary_replicas) == (6, 4)  # into the GPU given back
    p = plan(s, auto, "ccc", dep("aaa", 6, 6, 6), canary_pods(6, 4), 6, 4, p.status, NOW)
    assert (p.main_replicas, p.canary_replicas) == (6, 3)  # 9 Ready: maxUnavailable 1
    p = plan(s, auto, "ccc", dep("aaa", 10, 10, 10), pods("aaa", 10), 10, 0, p.status, NOW)
    assert p.target == "desired" and p.canary_replicas is None and p.main_replicas is None
    assert p.status["update"] == {**p.status["update"], "number": 3, "hash": "ccc"}
    assert "canary" not in p.status  # the autoscaler's count is the stable side's again


def test_a_canary_dropped_for_autoscaling_and_reverted_gives_its_replicas_back() -> None:
    """The same switch to autoscaling, with the pods back to the current revision (aaa): the
    stable Deployment's 5 were the autoscaler's whole count, so the canary's 5 Ready replicas
    went at once (10 Ready -> 5). They now go one at a time, as the stable ones come back."""
    mid, auto, s = switched_to_autoscaling()
    p = plan(s, auto, "aaa", dep("aaa", 5, 5, 5), canary_pods(5, 5), 5, 5, mid, NOW)
    assert (p.main_replicas, p.canary_replicas) == (5, 4) and p.hold_canary_template
    p = plan(s, auto, "aaa", dep("aaa", 5, 5, 5), canary_pods(5, 4), 5, 5, p.status, NOW)
    assert (p.main_replicas, p.canary_replicas) == (6, 4)
    p = plan(s, auto, "aaa", dep("aaa", 10, 10, 10), pods("aaa", 10), 10, 0, p.status, NOW)
    assert p.canary_replicas is None and p.status["reason"] == "UpToDate"
    assert "canary" not in p.status


def test_canary_spec_validation() -> None:
    with pytest.raises(SpecError, match="weights must increase"):
        parse_spec({**RAW, "rollout": {"canary": {"steps": [{"weight": 50}, {"weight": 10}]}}})
