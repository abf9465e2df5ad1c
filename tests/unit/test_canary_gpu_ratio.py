"""A canary whose pods need more GPUs each than the stable revision's (1 -> 2 GPUs per replica)
when no GPU is free: the stable side gives up ceil(new / old) replicas per canary pod, within
maxUnavailable, or the rollout waits and says what is missing (pure)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tests.unit.test_rollout import GOOD, NOW, dep, pods
from tests.unit.test_rollout_canary import CANARY_RAW, canary_pods

from kubemaas_operator.api import parse_spec
from kubemaas_operator.canary import first_room, give_back, slack
from kubemaas_operator.gpu_ratio import (
    GpuRatio,
    gpu_ratio,
    held_by_nodes,
    rollout_gpus,
    spare_in_gpus,
)
from kubemaas_operator.quota_room import QuotaInfo, free_in_quotas, waits_on_quota
from kubemaas_operator.rollout import plan
from kubemaas_operator.scheduling import NodeInfo

H100 = "NVIDIA-H100-80GB-HBM3"
TAINT = ({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},)

TWO = GpuRatio("nvidia.com/gpu", new=2, old=1)
STEPS = {"steps": [{"weight": 33}, {"weight": 100}]}


def pod_spec(gpus: int | None, resource: str = "nvidia.com/gpu") -> dict[str, Any]:
    res = {"limits": {resource: str(gpus)}} if gpus is not None else {}
    return {"containers": [{"name": "c", "resources": res}]}


def raw(replicas: int, **rollout: Any) -> dict[str, Any]:
    return {**CANARY_RAW, "replicas": replicas, "gpu": {**CANARY_RAW["gpu"], "count": 2},
            "rollout": {"canary": STEPS, **rollout}}


def stable(replicas: int) -> dict[str, Any]:
    return {**GOOD, "stableSpec": {**CANARY_RAW, "replicas": replicas,
                                   "rollout": {"canary": STEPS}}}


def test_the_ratio_comes_from_the_pod_specs_gpu_requests() -> None:
    assert gpu_ratio(pod_spec(2), pod_spec(1), "nvidia.com/gpu").ratio == 2
    assert gpu_ratio(pod_spec(3), pod_spec(2), "nvidia.com/gpu").ratio == 2  # rounded up
    assert gpu_ratio(pod_spec(8), pod_spec(2), "nvidia.com/gpu").ratio == 4
    assert gpu_ratio(pod_spec(1), pod_spec(2), "nvidia.com/gpu").ratio == 1  # smaller: 1
    assert gpu_ratio(pod_spec(2), pod_spec(None), "nvidia.com/gpu").ratio == 1  # none before
    assert gpu_ratio(pod_spec(2), None, "nvidia.com/gpu").ratio == 1
    assert gpu_ratio(pod_spec(2), pod_spec(1), None).ratio == 1  # a CPU model
    mig = "nvidia.com/mig-1g.10gb"
    assert gpu_ratio(pod_spec(2, mig), pod_spec(1, mig), mig).ratio == 2
    # once the stable Deployment carries the spec's revision (the spec went back to it, or a
    # promotion), the canary side is the canary Deployment's own pods
    canary_dep = {"spec": {"template": {"spec": pod_spec(2)}}}
    stable_dep = {"spec": {"template": {"spec": pod_spec(1)}}}
    assert rollout_gpus("nvidia.com/gpu", pod_spec(1), True, stable_dep, canary_dep).ratio == 2
    assert rollout_gpus("nvidia.com/gpu", pod_spec(2), False, stable_dep, None).ratio == 2


def test_slack_first_room_and_give_back_with_a_ratio() -> None:
    # no free GPU: the stable side may run maxUnavailable short, up to the ratio it allows
    assert slack(3, 0, 2, ratio=2) == 2 and slack(3, 0, 1, ratio=2) == 1
    assert slack(2, 0, 2, ratio=2) == 2  # the strategy's maxUnavailable 2: allowDowntime
    assert slack(2, 0, 1, ratio=2) == 1 and slack(4, 2, 1, ratio=2) == 0  # free GPUs: none
    assert slack(10, 0, 3, ratio=2) == 3  # a larger maxUnavailable is kept
    assert first_room(3, 0, 2, 2, 3) == 2  # 2 stable replicas go: a canary pod fits
    assert first_room(3, 0, 1, 2, 3) == 1  # only 1 may: it does not
    assert first_room(2, 0, 1, 2, 4) == 3  # 4 stable replicas scaled to 2 left their GPUs
    assert first_room(3, 0, 1, 2, 4) == 2  # a free GPU and one stable replica's
    assert first_room(2, 0, 1, 2, 2) == 1
    # an abort: the stable side grows into 2 replicas per canary pod the canary gives back
    assert give_back(3, 0, 1, 1, 2, ratio=2, units=3) == (1, 0)
    assert give_back(3, 0, 0, 1, 2, ratio=2, units=3) == (3, 0)
    assert give_back(5, 0, 2, 1, 2, ratio=2, units=5) == (1, 2)  # 1 Ready: both stay
    assert give_back(5, 0, 2, 3, 2, ratio=2, units=5) == (1, 0)
    assert give_back(4, 0, 1, 3, 1) == (3, 0)  # ratio 1 as before


def test_a_canary_pod_of_two_gpus_takes_two_stable_replicas_when_none_is_free() -> None:
    r = raw(3, maxUnavailable=2)
    s, good = parse_spec(r), stable(3)
    p = plan(s, r, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 3, 0, good, NOW, gpu=TWO)
    assert p.target == "stable" and (p.main_replicas, p.canary_replicas) == (1, 0)
    assert p.status["reason"] == "CanarySteps"
    p = plan(s, r, "bbb", dep("aaa", 2, 2, 2), pods("aaa", 2), 3, 0, p.status, NOW, gpu=TWO)
    assert (p.main_replicas, p.canary_replicas) == (1, 0)  # 1 GPU back: not enough yet
    p = plan(s, r, "bbb", dep("aaa", 1, 1, 1), pods("aaa", 1), 3, 0, p.status, NOW, gpu=TWO)
    assert (p.main_replicas, p.canary_replicas) == (1, 1)  # 2 GPUs back: the canary pod
    p = plan(s, r, "bbb", dep("aaa", 1, 1, 1), canary_pods(1, 1), 3, 0, p.status, NOW,
             gpu=TWO)
    assert (p.main_replicas, p.canary_replicas) == (1, 1)
    assert "waiting for promotion" in p.status["message"]
    # the same canary with free GPUs for it: 1:1 as before (the stable side keeps 2)
    p = plan(s, r, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 3, 2, good, NOW, gpu=TWO)
    assert (p.main_replicas, p.canary_replicas) == (3, 1)
    # a crashing canary is still rolled back
    crashed = [*pods("aaa", 1), replace(canary_pods(0, 1, new_ready=False)[0],
                                        waiting_reason="CrashLoopBackOff")]
    back = plan(s, r, "bbb", dep("aaa", 1, 1, 1), crashed, 3, 0, p.status, NOW, gpu=TWO)
    assert back.rolled_back and back.canary_replicas is None and back.target == "stable"


def test_an_aborted_canary_gives_the_gpus_back_in_the_ratio() -> None:
    r = raw(3, maxUnavailable=2)
    aborted = parse_spec({**r, "rollout": {**r["rollout"], "canary": {**STEPS, "abort": True}}})
    p = plan(aborted, r, "bbb", dep("aaa", 1, 1, 1), canary_pods(1, 1), 3, 0, stable(3), NOW,
             gpu=TWO)
    assert p.view.blocked_reason == "CanaryAborted"
    assert (p.main_replicas, p.canary_replicas) == (1, 0)  # the 2-GPU pod goes first
    p = plan(aborted, r, "bbb", dep("aaa", 1, 1, 1), pods("aaa", 1), 3, 0, p.status, NOW,
             gpu=TWO)
    assert (p.main_replicas, p.canary_replicas) == (3, None)  # then 2 stable replicas back


def test_a_spec_gone_back_mid_canary_gives_the_gpus_back_in_the_ratio() -> None:
    r = {**stable(5)["stableSpec"], "rollout": {"maxUnavailable": 2, "canary": STEPS}}
    mid = {**stable(5), "stableSpec": r, "update": {"number": 2, "hash": "bbb"},
           "canary": {"hash": "bbb", "step": 1, "steps": 2}}
    p = plan(parse_spec(r), r, "aaa", dep("aaa", 1, 1, 1), canary_pods(1, 2), 5, 0, mid, NOW,
             gpu=TWO)
    assert p.status["reason"] == "CanaryGivesBack" and (p.main_replicas, p.canary_replicas) == (
        1, 2)
    p = plan(parse_spec(r), r, "aaa", dep("aaa", 1, 1, 1), canary_pods(1, 1), 5, 0, p.status,
             NOW, gpu=TWO)
    assert (p.main_replicas, p.canary_replicas) == (3, 1)


def test_a_canary_pod_that_needs_more_than_max_unavailable_allows_waits_saying_why() -> None:
    r = raw(3)  # maxUnavailable 1: one stable replica frees 1 GPU, the canary pod needs 2
    s, good = parse_spec(r), stable(3)
    p = plan(s, r, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 3, 0, good, NOW, gpu=TWO)
    assert p.target == "hold" and p.main_replicas is None and p.canary_replicas is None
    assert p.status["strategy"] == "Wait" and p.status["reason"] == "CanaryNeedsGPUs"
    assert p.view.blocked_reason == "RolloutWaiting"
    msg = p.status["message"]
    assert "a canary pod needs 2 nvidia.com/gpu and a stable replica frees 1" in msg
    assert "raise spec.rollout.maxUnavailable to 2" in msg and "free 1 more" in msg
    assert waits_on_quota(p.status) and p.requeue_after is not None
    later = NOW.replace(minute=30)  # waiting is not a stall: no rollback at the deadline
    p = plan(s, r, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 3, 0, p.status, later, gpu=TWO)
    assert p.target == "hold" and not p.rolled_back
    # maxUnavailable raised: the canary starts, its deadline counted from now
    r2 = raw(3, maxUnavailable=2)
    p = plan(parse_spec(r2), r2, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 3, 0, p.status,
             later, gpu=TWO)
    assert (p.main_replicas, p.canary_replicas) == (1, 0) and p.status["reason"] == (
        "CanarySteps")
    assert p.status["update"]["progressAt"] == later.strftime("%Y-%m-%dT%H:%M:%SZ")
    # two replicas: only downtime (both stable replicas) or a free GPU makes room
    two = raw(2)
    p = plan(parse_spec(two), two, "bbb", dep("aaa", 2, 2, 2), pods("aaa", 2), 2, 0,
             stable(2), NOW, gpu=TWO)
    assert "set spec.rollout.allowDowntime: true and spec.rollout.maxUnavailable: 2" in (
        p.status["message"])
    down = raw(2, maxUnavailable=2, allowDowntime=True)
    p = plan(parse_spec(down), down, "bbb", dep("aaa", 2, 2, 2), pods("aaa", 2), 2, 0,
             stable(2), NOW, gpu=TWO)
    assert (p.main_replicas, p.canary_replicas) == (0, 0) and p.target == "stable"


def test_replicas_lowered_with_the_gpus_raised_need_no_wait() -> None:
    """4 x 1 GPU -> 2 x 2 GPUs: the two stable replicas the spec drops free the canary pod's
    GPUs, as the canary did before the ratio was counted."""
    r = raw(2)
    p = plan(parse_spec(r), r, "bbb", dep("aaa", 4, 4, 4), pods("aaa", 4), 2, 0, stable(4), NOW,
             gpu=TWO)
    assert p.target == "stable" and p.main_replicas == 1  # one short, as with any canary
    p = plan(parse_spec(r), r, "bbb", dep("aaa", 2, 2, 2), pods("aaa", 2), 2, 0, p.status, NOW,
             gpu=TWO)
    assert p.canary_replicas == 1  # the two replicas dropped left room for it


def test_a_free_gpu_counts_toward_the_canary_pod() -> None:
    """3 x 1 GPU and one free GPU (too few for a whole 2-GPU pod beside the stable ones, so no
    spare): one stable replica (maxUnavailable 1) and the free GPU hold the canary pod. The free
    GPUs come from the nodes (held_by_nodes: 4 one-GPU replicas fit, this model's counted)."""
    r = raw(3)
    s = parse_spec(r)
    nodes = [NodeInfo(name="n", labels={"nvidia.com/gpu.product": H100}, taints=TAINT,
                      allocatable={"nvidia.com/gpu": 8})]
    held = held_by_nodes(TWO, s, nodes, {"n": {"nvidia.com/gpu": 4}}, [])
    assert held.held == 4 and held_by_nodes(GpuRatio(new=1, old=1), s, nodes, {}, []).held == 0
    p = plan(s, r, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 3, 0, stable(3), NOW, gpu=held)
    assert p.status["reason"] == "CanarySteps" and (p.main_replicas, p.canary_replicas) == (2, 0)
    p = plan(s, r, "bbb", dep("aaa", 2, 2, 2), pods("aaa", 2), 3, 0, p.status, NOW, gpu=held)
    assert p.canary_replicas == 1
    # the same under a full quota: the nodes' free GPUs do not count, it waits
    full = ("gpus", "requests.nvidia.com/gpu: 3 of 3 used")
    p = plan(s, r, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 3, 0, stable(3), NOW,
             quota_full=full, gpu=held)
    assert p.target == "hold" and p.status["reason"] == "CanaryNeedsGPUs"
    # a quota with one GPU left counts it as the nodes' free GPU does (hard 6: the revision's
    # 3 x 2 GPUs fit in it; 5 used, by this model's 3 and others' 2)
    quotas = [QuotaInfo("gpus", {"requests.nvidia.com/gpu": "6"},
                        {"requests.nvidia.com/gpu": "5"}),
              QuotaInfo("scoped", {"requests.nvidia.com/gpu": "0"}, {}, scoped=True)]
    assert free_in_quotas(quotas, "nvidia.com/gpu") == 1
    assert free_in_quotas(quotas[1:], "nvidia.com/gpu") is None
    held = held_by_nodes(TWO, s, nodes, {"n": {"nvidia.com/gpu": 4}}, [], quotas)
    p = plan(s, r, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 3, 0, stable(3), NOW,
             quota_full=full, gpu=held)
    assert p.status["reason"] == "QuotaExceeded" and (p.main_replicas, p.canary_replicas) == (
        2, 0)
    # one stable replica gone: the quota has 2 left, the canary pod takes them
    two_left = held_by_nodes(TWO, s, nodes, {"n": {"nvidia.com/gpu": 4}}, [], [QuotaInfo(
        "gpus", {"requests.nvidia.com/gpu": "6"}, {"requests.nvidia.com/gpu": "4"})])
    p = plan(s, r, "bbb", dep("aaa", 2, 2, 2), pods("aaa", 2), 3, 0, p.status, NOW,
             quota_full=full, gpu=two_left)
    assert (p.main_replicas, p.canary_replicas) == (2, 1)


def test_a_canary_that_cannot_grow_within_max_unavailable_waits_saying_why() -> None:
    """5 x 1 GPU, maxUnavailable 2, a 40% step (2 canary pods of 2 GPUs): the first canary pod
    runs Ready beside 2 stable replicas; the second would need one more stable replica gone (3
    short): the canary waits with CanaryNeedsGPUs instead of being rolled back at its deadline."""
    r = {**raw(5, maxUnavailable=2), "rollout": {"maxUnavailable": 2, "canary": {
        "steps": [{"weight": 40}, {"weight": 100}]}}}
    s = parse_spec(r)
    p = plan(s, r, "bbb", dep("aaa", 5, 5, 5), pods("aaa", 5), 5, 0, stable(5), NOW, gpu=TWO)
    assert (p.main_replicas, p.canary_replicas) == (3, 0)
    p = plan(s, r, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 5, 0, p.status, NOW, gpu=TWO)
    assert p.canary_replicas == 1
    p = plan(s, r, "bbb", dep("aaa", 2, 2, 2), canary_pods(2, 1), 5, 0, p.status, NOW, gpu=TWO)
    assert (p.main_replicas, p.canary_replicas) == (2, 1)
    assert p.status["strategy"] == "Canary" and p.status["reason"] == "CanaryNeedsGPUs"
    assert "the next canary pod needs the GPUs of 2 stable replicas" in p.status["message"]
    assert waits_on_quota(p.status) and p.requeue_after == 5.0
    later = NOW.replace(minute=30)
    p = plan(s, r, "bbb", dep("aaa", 2, 2, 2), canary_pods(2, 1), 5, 0, p.status, later,
             gpu=TWO)
    assert not p.rolled_back and p.status["update"]["progressAt"] == later.strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    # a canary pod that is not Ready is no wait: the deadline still applies
    p = plan(s, r, "bbb", dep("aaa", 2, 2, 2), canary_pods(2, 1, new_ready=False), 5, 0,
             p.status, later.replace(minute=59), gpu=TWO)
    assert p.rolled_back


def test_a_full_quota_counts_the_ratio_too() -> None:
    """Free GPUs on the nodes but no room in the quota (read ahead): the stable side gives up
    2 replicas per canary pod, and the message says so."""
    r = raw(3, maxUnavailable=2)
    full = ("gpus", "requests.nvidia.com/gpu: 3 of 3 used")
    p = plan(parse_spec(r), r, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 3, 2, stable(3), NOW,
             quota_full=full, gpu=TWO)
    assert (p.main_replicas, p.canary_replicas) == (1, 0) and p.status["reason"] == (
        "QuotaExceeded")
    assert "gives 2 replicas per canary pod up first" in p.status["message"]


def test_a_ratio_that_does_not_divide_counts_gpus_not_whole_replicas() -> None:
    """2 x 2 GPUs -> 2 x 3 GPUs on 6 GPUs, maxUnavailable 1: the first canary pod took one
    stable replica's 2 GPUs and the free 2, the last stable replica went as it became Ready;
    the second 3-GPU pod fits in the 3 GPUs left. Counted as ceil(3 / 2) = 2 stable replicas
    per canary pod (4 GPUs), it never did: the canary sat with no stable replica at 1 of 2
    Ready, saying "raise maxUnavailable"."""
    three = GpuRatio("nvidia.com/gpu", new=3, old=2, held=3)  # the nodes hold 3 x 2 GPUs
    r = {**CANARY_RAW, "replicas": 2, "gpu": {**CANARY_RAW["gpu"], "count": 3},
         "rollout": {"canary": STEPS}}
    s = parse_spec(r)
    old = {**GOOD, "stableSpec": {**CANARY_RAW, "replicas": 2, "gpu": {
        **CANARY_RAW["gpu"], "count": 2}, "rollout": {"canary": STEPS}}}
    p = plan(s, r, "bbb", dep("aaa", 2, 2, 2), pods("aaa", 2), 2, 0, old, NOW, gpu=three)
    assert (p.main_replicas, p.canary_replicas) == (1, 0)
    p = plan(s, r, "bbb", dep("aaa", 1, 1, 1), pods("aaa", 1), 2, 0, p.status, NOW, gpu=three)
    assert p.canary_replicas == 1  # 2 GPUs given up and 2 free hold one 3-GPU pod
    step2 = {**p.status, "canary": {**p.status["canary"], "step": 2}}
    p = plan(s, r, "bbb", dep("aaa", 1, 1, 1), canary_pods(1, 1), 2, 0, step2, NOW, gpu=three)
    assert (p.main_replicas, p.canary_replicas) == (0, 1)  # 1 of 2 Ready: maxUnavailable 1
    p = plan(s, r, "bbb", dep("aaa", 0, 0, 0), canary_pods(0, 1), 2, 0, step2, NOW, gpu=three)
    assert (p.main_replicas, p.canary_replicas) == (0, 2)  # 3 GPUs left: the second pod
    assert p.status["reason"] == "CanarySteps"
    # an abort gives 3 GPUs back per canary pod: one 2-GPU stable replica beside the pod
    aborted = parse_spec({**r, "rollout": {"canary": {**STEPS, "abort": True}}})
    p = plan(aborted, r, "bbb", dep("aaa", 0, 0, 0), canary_pods(0, 2), 2, 0, step2, NOW,
             gpu=three)
    assert p.main_replicas == 0  # 2 x 3 GPUs hold all 6
    p = plan(aborted, r, "bbb", dep("aaa", 0, 0, 0), canary_pods(0, 1), 2, 0, step2, NOW,
             gpu=three)
    assert p.main_replicas == 1


def test_a_revision_that_waits_after_a_superseded_canary_gets_the_stable_replicas_back() -> None:
    """4 x 1 GPU, maxUnavailable 2: a canary of 2-GPU pods has the stable Deployment down to 2
    replicas for its first pod; the spec changes again, to 4 GPUs per pod, which must wait
    (CanaryNeedsGPUs). The wait held the Deployment as it was: 2 of 4 replicas, 2 GPUs idle for
    a canary that no longer exists, for as long as it waited. Now the stable Deployment is
    rendered again at the spec's replicas while the new revision waits."""
    r = {**raw(4, maxUnavailable=2), "rollout": {"maxUnavailable": 2, "canary": STEPS}}
    p = plan(parse_spec(r), r, "bbb", dep("aaa", 4, 4, 4), pods("aaa", 4), 4, 0, stable(4), NOW,
             gpu=GpuRatio("nvidia.com/gpu", new=2, old=1, held=4))
    assert (p.main_replicas, p.canary_replicas) == (2, 0)
    four = {**r, "gpu": {**r["gpu"], "count": 4}}
    p = plan(parse_spec(four), four, "ccc", dep("aaa", 2, 2, 2), pods("aaa", 2), 4, 0, p.status,
             NOW, gpu=GpuRatio("nvidia.com/gpu", new=4, old=1, held=4))
    assert p.status["strategy"] == "Wait" and p.status["reason"] == "CanaryNeedsGPUs"
    assert p.view.blocked_reason == "RolloutWaiting" and p.canary_replicas is None
    assert p.target == "stable" and p.main_replicas in (None, 4)
    # a plain wait with no canary before it still holds the Deployment as it is
    p = plan(parse_spec(four), four, "ccc", dep("aaa", 4, 4, 4), pods("aaa", 4), 4, 0, stable(4),
             NOW, gpu=GpuRatio("nvidia.com/gpu", new=4, old=1, held=4))
    assert p.target == "hold" and p.status["reason"] == "CanaryNeedsGPUs"


def test_a_third_revision_of_another_pod_size_takes_the_superseded_canary_back_first() -> None:
    """4 x 1 GPU on 4 GPUs, maxUnavailable 2: a canary of 2-GPU pods runs one Ready pod beside 2
    stable replicas; the spec changes to 1 GPU per pod. The canary Deployment was given the new
    template at 2 replicas: it created a 1-GPU pod beside its 2-GPU one (maxSurge 0,
    maxUnavailable 1 keep the Ready one), which stayed Pending on no free GPU until the healthy
    revision was rolled back at its progressDeadlineSeconds. Now the superseded canary's pods
    give their GPUs back to the stable Deployment first (the canary Deployment keeps their
    template), and the new revision's canary starts from there."""
    r = {**raw(4, maxUnavailable=2), "rollout": {"maxUnavailable": 2, "canary": STEPS}}
    p = plan(parse_spec(r), r, "bbb", dep("aaa", 4, 4, 4), pods("aaa", 4), 4, 0, stable(4), NOW,
             gpu=GpuRatio("nvidia.com/gpu", new=2, old=1, held=4))
    mid = p.status
    one = {**r, "gpu": {**r["gpu"], "count": 1}}
    was = GpuRatio("nvidia.com/gpu", new=1, old=1, was=2)
    p = plan(parse_spec(one), one, "ccc", dep("aaa", 2, 2, 2), canary_pods(2, 1), 4, 0, mid, NOW,
             gpu=was)
    assert p.hold_canary_template and p.status["reason"] == "CanaryGivesBack"
    assert (p.main_replicas, p.canary_replicas) == (2, 0) and p.target == "stable"
    assert "revision 3" in p.status["message"] and not p.rolled_back
    p = plan(parse_spec(one), one, "ccc", dep("aaa", 2, 2, 2), pods("aaa", 2), 4, 0, p.status,
             NOW, gpu=GpuRatio("nvidia.com/gpu", new=1, old=1))
    assert not p.hold_canary_template and p.status["reason"] == "CanarySteps"
    assert (p.main_replicas, p.canary_replicas) == (2, 2)  # 1:1 from here
    # a third revision of the same pod size rolls the canary's pods in place, as before
    same = GpuRatio("nvidia.com/gpu", new=2, old=1, held=4, was=2)
    two = {**r, "runtime": {"image": "img:3"}}
    p = plan(parse_spec(two), two, "ccc", dep("aaa", 2, 2, 2), canary_pods(2, 1), 4, 0, mid, NOW,
             gpu=same)
    assert not p.hold_canary_template and p.canary_replicas == 1


def test_the_superseded_canary_pod_size_is_read_from_the_canary_deployment() -> None:
    stable_dep = {"spec": {"template": {"spec": pod_spec(1)}}}
    canary_dep = {"metadata": {"annotations": {"serving.kubemaas.io/revision": "bbb"}},
                  "spec": {"template": {"spec": pod_spec(2)}}}
    g = rollout_gpus("nvidia.com/gpu", pod_spec(1), False, stable_dep, canary_dep, "ccc")
    assert (g.new, g.old, g.was) == (1, 1, 2)
    g = rollout_gpus("nvidia.com/gpu", pod_spec(1), False, stable_dep, canary_dep, "bbb")
    assert g.was == 0  # the canary Deployment runs the spec's revision


def test_a_revision_whose_replicas_cannot_all_fit_waits_untouched() -> None:
    """3 x 1 GPU -> 3 x 2 GPUs on one node of 3 GPUs: the 6 GPUs the new revision needs are
    more than the node has, whatever the stable side gives up. The canary waited forever
    (CanaryNeedsGPUs, "raise spec.rollout.maxUnavailable to 2", which could not help), or with
    maxUnavailable 2 took 2 stable replicas down for a canary that could never complete. Now it
    waits (reason InsufficientGPU: more nodes or a higher quota bring it up, as a model short
    of GPUs waits), the stable side untouched, and the message says what it needs, what the
    nodes hold and what to change."""
    nodes = [NodeInfo(name="n", labels={"nvidia.com/gpu.product": H100}, taints=TAINT,
                      allocatable={"nvidia.com/gpu": 3})]
    for unavailable in (1, 2):
        r = raw(3, maxUnavailable=unavailable)
        s = parse_spec(r)
        held = held_by_nodes(TWO, s, nodes, {}, [])
        assert (held.nodes_hold, held.nodes_gpus) == (1, 3)
        p = plan(s, r, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 3, 0, stable(3), NOW,
                 gpu=held)
        assert not p.rolled_back and p.target == "hold"
        assert (p.status["strategy"], p.status["reason"]) == ("Wait", "InsufficientGPU")
        assert p.main_replicas is None and p.canary_replicas is None  # nothing given up
        msg = p.status["message"]
        assert "its 3 replicas need 6 nvidia.com/gpu in all" in msg
        assert "the matching nodes have 3 (room for 1 such pod" in msg
        assert "set spec.replicas to 1 or fewer" in msg and "add matching nodes" in msg
        assert "maxUnavailable" not in msg
    # a quota that allows fewer GPUs than the revision needs in all: the same
    r = raw(3, maxUnavailable=2)
    s = parse_spec(r)
    big = [replace(nodes[0], allocatable={"nvidia.com/gpu": 8})]
    quota = [QuotaInfo("gpus", {"requests.nvidia.com/gpu": "4"},
                       {"requests.nvidia.com/gpu": "3"})]
    p = plan(s, r, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 3, 0, stable(3), NOW,
             gpu=held_by_nodes(TWO, s, big, {"n": {"nvidia.com/gpu": 5}}, [], quota))
    assert not p.rolled_back and "the namespace's ResourceQuota gpus allows 4" in (
        p.status["message"])
    assert waits_on_quota(p.status)  # the quota's change wakes it
    assert "set spec.replicas to 2 or fewer" in p.status["message"]
    # room for all 3 on the nodes (8 GPUs, 5 of them others'): it waits or grows as before
    p = plan(s, r, "bbb", dep("aaa", 3, 3, 3), pods("aaa", 3), 3, 0, stable(3), NOW,
             gpu=held_by_nodes(TWO, s, big, {"n": {"nvidia.com/gpu": 5}}, []))
    assert not p.rolled_back and (p.main_replicas, p.canary_replicas) == (1, 0)


def test_a_canary_of_smaller_pods_is_asked_for_only_where_its_gpus_are_free() -> None:
    """2 x 2 GPUs -> 2 x 1 GPU on a node of 4 GPUs. The capacity check counts this model's own
    GPUs as room at the new pod size (4 one-GPU pods, 2 beyond the replicas), though the two
    stable replicas hold all 4: the canary counted 2 free and asked for its pod beside both
    stable replicas, where it stayed Pending (no stable replica gave a GPU up while it was not
    Ready) until the rollout was rolled back at its deadline. Now the room is counted in
    stable-size replicas (what the nodes hold of them beyond the replicas): none is free, one
    stable replica goes first, and the canary pod takes its GPUs."""
    r = {**CANARY_RAW, "replicas": 2, "gpu": {**CANARY_RAW["gpu"], "count": 1},
         "rollout": {"canary": STEPS}}
    s = parse_spec(r)
    old = {**GOOD, "stableSpec": {**CANARY_RAW, "replicas": 2, "gpu": {
        **CANARY_RAW["gpu"], "count": 2}, "rollout": {"canary": STEPS}}}
    nodes = [NodeInfo(name="n", labels={"nvidia.com/gpu.product": H100}, taints=TAINT,
                      allocatable={"nvidia.com/gpu": 4})]
    half = held_by_nodes(GpuRatio("nvidia.com/gpu", new=1, old=2), s, nodes, {}, [])
    assert half.held == 2
    p = plan(s, r, "bbb", dep("aaa", 2, 2, 2), pods("aaa", 2), 2, 2, old, NOW, gpu=half)
    assert (p.main_replicas, p.canary_replicas) == (1, 0)  # was (2, 1): a Pending pod
    p = plan(s, r, "bbb", dep("aaa", 1, 1, 1), pods("aaa", 1), 2, 2, p.status, NOW, gpu=half)
    assert (p.main_replicas, p.canary_replicas) == (1, 1)
    # two GPUs really free (6 on the node): the canary pod runs beside both stable replicas
    six = [replace(nodes[0], allocatable={"nvidia.com/gpu": 6})]
    free = held_by_nodes(GpuRatio("nvidia.com/gpu", new=1, old=2), s, six, {}, [])
    p = plan(s, r, "bbb", dep("aaa", 2, 2, 2), pods("aaa", 2), 2, 4, old, NOW, gpu=free)
    assert (p.main_replicas, p.canary_replicas) == (2, 1)
    # pods of the same size (1:1) count as before
    assert spare_in_gpus(GpuRatio("nvidia.com/gpu", new=1, old=1), 2, 2) == 2
    assert spare_in_gpus(GpuRatio("nvidia.com/gpu", new=2, old=1, held=2), 2, 1) == 1
