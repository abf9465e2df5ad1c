"""rollout.py / rollout_strategy.py: a surge the namespace's ResourceQuota refuses (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from tests.unit.test_rollout import GOOD, NOW, RAW, dep, pods, spec

from kubemaas_operator.api import parse_spec
from kubemaas_operator.observed import PodInfo, deployment_info, quota_refusal
from kubemaas_operator.quota_room import waits_on_quota
from kubemaas_operator.rollout import plan
from kubemaas_operator.rollout_strategy import QUOTA_RECHECK_S, WAIT_RECHECK_S, choose_strategy

REFUSAL = ('pods "m-6c58475bdb-2wqxx" is forbidden: exceeded quota: gpus, requested: '
           'requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=4, limited: '
           'requests.nvidia.com/gpu=4')
WORDS = REFUSAL[REFUSAL.index("forbidden"):]


def refused(revision: str, **extra: Any) -> Any:
    return replace(dep(revision, **extra), replica_failure=REFUSAL)


def test_a_quota_refusal_is_told_apart_from_other_create_failures() -> None:
    assert quota_refusal(REFUSAL) == ("gpus", WORDS)  # the pod's name left out: it changes
    assert quota_refusal('pods "x" is forbidden: exceeded quota: pods, requested: pods=1, '
                         'used: pods=2, limited: pods=2')[0] == "pods"  # type: ignore[index]
    assert quota_refusal('no PriorityClass with name gold was found') is None
    raw = {"metadata": {}, "status": {"conditions": [
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
         "message": REFUSAL}]}}
    assert deployment_info(raw).replica_failure == REFUSAL


def test_no_surge_under_a_refusing_quota_whatever_the_free_gpus() -> None:
    s = choose_strategy(spec(), 4, 5, ("gpus", WORDS))
    assert (s.name, s.max_surge, s.max_unavailable, s.reason) == (
        "Replace", 0, 1, "QuotaExceeded")
    assert "ResourceQuota gpus has no room for a surge pod" in s.message
    assert WORDS in s.message and "at least 3 of 4 stay ready" in s.message
    one = parse_spec({**RAW, "replicas": 1})
    w = choose_strategy(one, 1, 5, ("gpus", WORDS))
    assert (w.name, w.reason) == ("Wait", "QuotaExceeded")
    assert "allowDowntime" in w.message and "raise ResourceQuota gpus" in w.message
    assert "free a GPU" not in w.message
    # maxUnavailable 0: the hint names it and the quota
    z = choose_strategy(spec(maxUnavailable=0), 4, 5, ("gpus", WORDS))
    assert z.name == "Wait" and "raise spec.rollout.maxUnavailable" in z.message
    assert "raise ResourceQuota gpus" in z.message


def test_a_surge_the_quota_refuses_turns_into_a_sticky_replacement() -> None:
    surging = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 2, GOOD, NOW)
    assert surging.status["strategy"] == "Surge"
    # the surge pod was refused: no pod of bbb exists, no pod is unschedulable
    p = plan(spec(), RAW, "bbb", refused("bbb", updated=0), pods("aaa"), 4, 2,
             surging.status, NOW)
    assert p.status["strategy"] == "Replace" and p.deployment_strategy == (0, 1)
    assert p.status["reason"] == "QuotaExceeded" and WORDS in p.status["message"]
    assert p.status["quota"] == {"name": "gpus", "message": WORDS}
    assert p.view.strategy_reason == "ReplaceRollout"
    # the refusal goes once the replacement made room; the reason to replace stays
    later = plan(spec(), RAW, "bbb", dep("bbb", updated=1), [*pods("aaa", 3), *pods("bbb", 1)],
                 4, 2, p.status, NOW)
    assert later.status == {**p.status, "update": later.status["update"]}
    assert later.deployment_strategy == (0, 1)
    # the quota named in status.rollout.quota, not read back from the message's words
    reworded = {**p.status, "message": "replace in place"}
    again = plan(spec(), RAW, "bbb", dep("bbb", updated=1), [*pods("aaa", 3), *pods("bbb", 1)],
                 4, 2, reworded, NOW)
    assert again.status["quota"] == p.status["quota"] and again.deployment_strategy == (0, 1)


def test_a_single_replica_under_the_quota_waits_with_its_surge_pending() -> None:
    one = parse_spec({**RAW, "replicas": 1})
    raw_one = {**RAW, "replicas": 1}
    good = {**GOOD, "stableSpec": raw_one}
    surging = plan(one, raw_one, "bbb", dep("aaa"), pods("aaa", 1), 1, 2, good, NOW)
    assert surging.deployment_strategy == (1, 0)
    p = plan(one, raw_one, "bbb", refused("bbb", updated=0), pods("aaa", 1), 1, 2,
             surging.status, NOW)
    assert p.status["strategy"] == "Wait" and p.status["reason"] == "QuotaExceeded"
    # the only replica keeps serving: the pending surge stays, nothing is replaced
    assert p.deployment_strategy == (1, 0) and p.target == "desired"
    assert p.view.blocked_reason == "RolloutWaiting"
    assert "ResourceQuota gpus" in p.view.blocked_message and WORDS in p.view.blocked_message
    # a wait is not a stall: not rolled back after progressDeadlineSeconds
    late = NOW + timedelta(seconds=3600)
    again = plan(one, raw_one, "bbb", refused("bbb", updated=0), pods("aaa", 1), 1, 2,
                 p.status, late)
    assert not again.rolled_back and again.status == p.status
    # the quota raised: the surge pod is created, the rollout goes on, its deadline from now
    go = plan(one, raw_one, "bbb", dep("bbb", updated=1, ready=1),
              [*pods("aaa", 1), *pods("bbb", 1, ready=False)], 1, 1, again.status, late)
    assert go.status["strategy"] == "Surge" and not go.rolled_back
    assert go.status["update"]["progressAt"] != p.status["update"]["progressAt"]


def test_a_bad_revision_under_the_quota_is_still_rolled_back() -> None:
    one = parse_spec({**RAW, "replicas": 1})
    raw_one = {**RAW, "replicas": 1}
    good = {**GOOD, "stableSpec": raw_one}
    surging = plan(one, raw_one, "bbb", dep("aaa"), pods("aaa", 1), 1, 2, good, NOW)
    crashing = [*pods("aaa", 1), PodInfo(name="new", phase="Running", revision="bbb",
                                         waiting_reason="CrashLoopBackOff")]
    p = plan(one, raw_one, "bbb", refused("bbb", updated=1), crashing, 1, 2,
             surging.status, NOW)
    assert p.rolled_back and p.target == "stable" and p.deployment_strategy == (0, 1)


def test_a_replacement_under_the_quota_is_not_degraded_by_its_refused_pod() -> None:
    """The ReplicaSet's pod for a replaced one is refused until the quota controller counts the
    old one gone: the model flipped Progressing -> Degraded (FailedCreate) -> Progressing at
    each replaced replica (seen on the local control plane)."""
    from tests.unit.test_status import observed

    from kubemaas_operator.status import RolloutView, compute_status

    p = plan(spec(), RAW, "bbb", refused("bbb", updated=0), pods("aaa"), 4, 2,
             plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 2, GOOD, NOW).status, NOW)
    view = p.view
    mid = replace(dep("bbb", ready=3, updated=1), replica_failure=REFUSAL)
    live = [*pods("aaa", 3), *pods("bbb", 0)]
    st = compute_status(spec(), observed(deployment=mid, pods=live, rollout=view,
                                         desired_revision="bbb")).status
    assert st["phase"] == "Progressing" and st["reason"].startswith("ReplaceRollout"), st
    # the same refusal outside a quota replacement still says FailedCreate
    other = compute_status(spec(), observed(deployment=mid, pods=live, rollout=RolloutView(),
                                            desired_revision="bbb")).status
    assert other["reason"].startswith("FailedCreate"), other["reason"]


AHEAD = ("gpus", "requests.nvidia.com/gpu: 4 of 4 used, one more pod of the new revision needs "
                 "1 (hard limit minus used, read ahead)")


def test_a_full_quota_read_ahead_replaces_from_the_start() -> None:
    """The namespace's quota has no room for one more pod: the rollout replaces in place from
    its first pass (no surge the Deployment controller would fail to create), names the quota
    in our words and keeps doing so."""
    p = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 2, GOOD, NOW, quota_full=AHEAD)
    assert p.status["strategy"] == "Replace" and p.deployment_strategy == (0, 1)
    assert p.status["reason"] == "QuotaExceeded"
    assert p.status["quota"] == {"name": "gpus", "message": AHEAD[1]}
    assert "ResourceQuota gpus has no room for a surge pod (requests.nvidia.com/gpu: 4 of 4" in (
        p.status["message"]) and "API server" not in p.status["message"]
    # the replacement's own new pod fills the quota again: still a replacement, same words
    later = plan(spec(), RAW, "bbb", dep("bbb", updated=1), [*pods("aaa", 3), *pods("bbb", 1)],
                 4, 2, p.status, NOW, quota_full=AHEAD)
    assert later.status == {**p.status, "update": later.status["update"]}
    # a replaced replica's new pod refused for a moment: the words read ahead stay (no write)
    refusal = plan(spec(), RAW, "bbb", refused("bbb", updated=1),
                   [*pods("aaa", 3), *pods("bbb", 1)], 4, 2, p.status, NOW, quota_full=AHEAD)
    assert refusal.status == later.status
    # and once the quota has room the replacement stays one (a rollout keeps its strategy)
    roomy = plan(spec(), RAW, "bbb", dep("bbb", updated=1), [*pods("aaa", 3), *pods("bbb", 1)],
                 4, 2, p.status, NOW)
    assert roomy.deployment_strategy == (0, 1)


def test_a_surge_under_way_is_not_undone_by_its_own_pod_in_the_quota() -> None:
    """A surge started while the quota had room: its surge pod fills the quota, which must not
    turn it into a replacement (nothing was refused)."""
    surging = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 2, GOOD, NOW)
    assert surging.status["strategy"] == "Surge"
    p = plan(spec(), RAW, "bbb", dep("bbb", updated=1), [*pods("aaa", 4), *pods("bbb", 1)],
             4, 2, surging.status, NOW, quota_full=AHEAD)
    assert p.status["strategy"] == "Surge" and p.deployment_strategy == (1, 0)


def test_a_single_replica_waits_on_the_quota_read_ahead_without_applying_then_surges() -> None:
    one = parse_spec({**RAW, "replicas": 1})
    raw_one = {**RAW, "replicas": 1}
    good = {**GOOD, "stableSpec": raw_one}
    w = plan(one, raw_one, "bbb", dep("aaa"), pods("aaa", 1), 1, 2, good, NOW, quota_full=AHEAD)
    assert w.status["strategy"] == "Wait" and w.status["reason"] == "QuotaExceeded"
    assert w.target == "hold" and w.view.blocked_reason == "RolloutWaiting"
    assert "raise ResourceQuota gpus" in w.status["message"]
    assert w.status["quota"]["name"] == "gpus"
    again = plan(one, raw_one, "bbb", dep("aaa"), pods("aaa", 1), 1, 2, w.status, NOW,
                 quota_full=AHEAD)
    assert again.status == w.status  # steady while it waits: nothing to write
    # the quota raised: the surge goes ahead on the next look
    raised = plan(one, raw_one, "bbb", dep("aaa"), pods("aaa", 1), 1, 2, w.status, NOW)
    assert raised.status["strategy"] == "Surge" and raised.target != "hold"
    assert raised.deployment_strategy == (1, 0)


def test_a_rollout_waiting_on_the_quota_is_woken_by_it_and_only_rechecks_slowly() -> None:
    """A rollout held by the quota is in quota_wait_index (a quota's change wakes it): its own
    re-check is a slow safety net. One waiting for a free GPU has no such event: it looks again
    every few seconds. A model rolling or at rest is not woken by its namespace's quotas."""
    one = parse_spec({**RAW, "replicas": 1})
    raw_one = {**RAW, "replicas": 1}
    good = {**GOOD, "stableSpec": raw_one}
    w = plan(one, raw_one, "bbb", dep("aaa"), pods("aaa", 1), 1, 2, good, NOW, quota_full=AHEAD)
    assert waits_on_quota(w.status) and w.requeue_after == QUOTA_RECHECK_S > WAIT_RECHECK_S
    gpu = plan(one, raw_one, "bbb", dep("aaa"), pods("aaa", 1), 1, 0, good, NOW)
    assert gpu.status["reason"] == "NoFreeGPU" and gpu.requeue_after == WAIT_RECHECK_S
    assert not waits_on_quota(gpu.status)
    replacing = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 2, GOOD, NOW,
                     quota_full=AHEAD)
    assert replacing.status["reason"] == "QuotaExceeded" and not waits_on_quota(
        replacing.status)  # it goes ahead by itself
    assert not waits_on_quota({}) and not waits_on_quota(GOOD)


CANARY_RAW = {**RAW, "rollout": {"canary": {"steps": [{"weight": 50}]}}}  # 4 replicas


def canary_pods(old: int, new: int, ready: bool = True, **extra: Any) -> list[PodInfo]:
    return [*pods("aaa", old), *[PodInfo(name=f"c{i}", phase="Running", node="n", ready=ready,
                                         revision="bbb", track="canary", **extra)
                                 for i in range(new)]]


def test_a_canary_under_a_full_quota_gives_a_stable_replica_up_first() -> None:
    """Free GPUs, but no room in the quota for one more pod: the canary does not add its pods
    beside the stable ones (the API server would refuse them); the stable Deployment gives one
    up first and the canary takes its room, reason QuotaExceeded, the quota named. It keeps
    doing so while the stable pods it gave up leave room in the quota."""
    s = parse_spec(CANARY_RAW)
    good = {**GOOD, "stableSpec": CANARY_RAW}
    free = plan(s, CANARY_RAW, "bbb", dep("aaa"), pods("aaa"), 4, 2, good, NOW)
    assert (free.main_replicas, free.canary_replicas) == (4, 2)  # beside: the quota has room
    assert free.status["reason"] == "CanarySteps" and "quota" not in free.status
    p = plan(s, CANARY_RAW, "bbb", dep("aaa"), pods("aaa"), 4, 2, good, NOW, quota_full=AHEAD)
    assert (p.main_replicas, p.canary_replicas) == (3, 0)
    assert p.status["strategy"] == "Canary" and p.status["reason"] == "QuotaExceeded"
    assert p.status["quota"] == {"name": "gpus", "message": AHEAD[1]}
    assert "ResourceQuota gpus has no room for a canary pod beside the stable ones" in (
        p.status["message"]) and "canary step 1/1" in p.view.strategy_message
    assert waits_on_quota(p.status)  # a quota's change wakes it
    # one stable replica gone: the quota has room for one pod now, the canary takes it
    p = plan(s, CANARY_RAW, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 4, 2, p.status, NOW)
    assert (p.main_replicas, p.canary_replicas) == (3, 1) and p.status["reason"] == (
        "QuotaExceeded")
    p = plan(s, CANARY_RAW, "bbb", dep("aaa", 3, 3, 3), canary_pods(3, 1), 4, 2, p.status, NOW,
             quota_full=AHEAD)
    assert (p.main_replicas, p.canary_replicas) == (2, 1)
    # a canary that crashes under the quota is still rolled back
    crashed = canary_pods(2, 2, ready=False, waiting_reason="CrashLoopBackOff")
    back = plan(s, CANARY_RAW, "bbb", dep("aaa", 2, 2, 2), crashed, 4, 2, p.status, NOW)
    assert back.rolled_back and back.canary_replicas is None and back.target == "stable"


def test_a_single_replica_canary_under_a_full_quota_waits_naming_it() -> None:
    one_raw = {**CANARY_RAW, "replicas": 1}
    one = parse_spec(one_raw)
    good = {**GOOD, "stableSpec": one_raw}
    w = plan(one, one_raw, "bbb", dep("aaa", 1, 1, 1), pods("aaa", 1), 1, 2, good, NOW,
             quota_full=AHEAD)
    assert w.target == "hold" and w.canary_replicas is None
    assert w.status["strategy"] == "Wait" and w.status["reason"] == "QuotaExceeded"
    assert "raise ResourceQuota gpus" in w.view.blocked_message and waits_on_quota(w.status)
