"""A third revision of the same pod size mid-canary, replaced in place (canary.swap_strategy):
the stable side grows back only beside the canary's pods, which hold their GPUs while they are
replaced. Pure: rollout.plan driven over passes against tests/unit/rollout_sim.py."""

from __future__ import annotations

from typing import Any

from tests.unit.rollout_sim import Sim
from tests.unit.test_rollout_canary import CANARY_RAW


def spec(replicas: int, max_unavailable: int, gpus: int, image: str) -> dict[str, Any]:
    return {**CANARY_RAW, "replicas": replicas, "gpu": {**CANARY_RAW["gpu"], "count": gpus},
            "runtime": {"image": image}, "rollout": {
                "maxUnavailable": max_unavailable, "progressDeadlineSeconds": 60,
                "canary": {"steps": [{"weight": 50}, {"weight": 90}, {"weight": 100}]}}}


def third_revision(replicas: int, max_unavailable: int, gpus: int, free: int,
                   passes: int) -> tuple[Sim, dict[str, Any], int]:
    """bbb's canary runs `passes` passes (x 1 GPU stable replicas, `gpus` per canary pod), then
    ccc, of the same pod size, for 30: the Sim, the last status and the fewest Ready seen."""
    s = Sim(gpus=replicas + free, sizes={"aaa": 1, "bbb": gpus, "ccc": gpus}, main_n=replicas)
    s.scale("main", "aaa", replicas)
    s.settle()
    s.settle()
    status: dict[str, Any] = {"current": {"number": 1, "hash": "aaa"},
                              "stableSpec": spec(replicas, max_unavailable, 1, "img:1")}
    for revision, image, n in (("bbb", "img:2", passes), ("ccc", "img:3", 30)):
        status, lowest = s.run(spec(replicas, max_unavailable, gpus, image), revision,
                               replicas, status, n)
        if revision == "bbb":
            assert {q.revision for q in s.pods if q.track == "canary"} == {"bbb"}
    return s, status, lowest


def test_the_stable_side_grows_only_beside_the_canary_pods_being_replaced() -> None:
    """10 x 1 GPU on 10 GPUs, maxUnavailable 3, canary pods of 2 GPUs: 5 stable replicas and 2
    canary pods Ready (9 GPUs), the canary short of GPUs. A fix of the same pod size: the
    stable Deployment was asked for 7 replicas (the floor 10 - 3, the new canary's pods not
    Ready yet) into the one free GPU and those the old canary pods gave up one at a time, so
    the new 2-GPU pod stayed Pending until the revision's deadline rolled it back."""
    s, status, lowest = third_revision(10, 3, 2, 0, 9)
    assert not status.get("failed"), status.get("message")
    assert {(q.revision, q.ready) for q in s.pods if q.track == "canary"} == {("ccc", True)}
    assert lowest >= 7


def test_free_gpus_beside_a_canary_being_replaced_do_not_bring_every_stable_replica_back() -> (
        None):
    """9 x 1 GPU on 11 GPUs, maxUnavailable 1, a canary of 1-GPU pods at 5 beside 4 stable
    replicas: a fix came and the stable Deployment was asked for all 9 (the 2 free GPUs made it
    keep every replica the new canary did not serve), beside the 5 old canary pods: 14 pods on
    11 GPUs, the new canary pod Pending until the deadline rolled the fix back."""
    s, status, lowest = third_revision(9, 1, 1, 2, 10)
    assert not status.get("failed"), status.get("message")
    assert {(q.revision, q.ready) for q in s.pods if q.track == "canary"} == {("ccc", True)}
    assert lowest >= 8


def test_a_lost_status_write_on_the_swaps_first_pass_rolls_nothing_back() -> None:
    """3 x 1 GPU on 3 GPUs, maxUnavailable 2, a canary of one 2-GPU pod: a fix of the same pod
    size came, and the status its first pass wrote was lost (a conflict, the API server
    away). The next pass read the old canary's state, so it did not know the canary
    Deployment's replicas and counted the surge pod the swap had made as one to keep: the
    canary grew to 2 pods, the stable side went to 0, the new pods stayed Pending behind the
    old Ready one and the fix was rolled back at its deadline (no canary replica Ready)."""
    replicas, gpus = 3, 2
    s = Sim(gpus=replicas, sizes={"aaa": 1, "bbb": gpus, "ccc": gpus}, main_n=replicas)
    s.scale("main", "aaa", replicas)
    s.settle()
    s.settle()
    status: dict[str, Any] = {"current": {"number": 1, "hash": "aaa"},
                              "stableSpec": spec(replicas, 2, 1, "img:1")}
    status, _ = s.run(spec(replicas, 2, gpus, "img:2"), "bbb", replicas, status, 5)
    new = spec(replicas, 2, gpus, "img:3")
    p = s.look(new, "ccc", replicas, status)  # its status write is lost: `status` stays
    s.apply(p, "ccc", replicas)
    s.settle()
    status, _ = s.run(new, "ccc", replicas, status, 30)
    assert not status.get("failed"), status.get("message")
    assert {(q.revision, q.ready) for q in s.pods if q.track == "canary"} == {("ccc", True)}


def test_a_swap_pod_waiting_for_room_is_not_a_stall() -> None:
    """8 x 1 GPU on 8 GPUs, maxUnavailable 2, canary pods of 2 GPUs, pods Ready 30 s after
    they start: a fix of the same pod size came while a stable replica was still starting, so
    the model stood at the floor (6 Ready) and the new canary pod waited, Pending, for the old
    one's GPUs (canary.swap_strategy). The deadline ran while it waited: it got its node 45 s
    in, needed 35 s more, and the fix was rolled back at 60 s with no canary replica Ready.
    Now the deadline of a canary whose pods wait for a node waits with them."""
    replicas, gpus = 8, 2
    s = Sim(gpus=replicas, sizes={"aaa": 1, "bbb": gpus, "ccc": gpus}, main_n=replicas,
            late=6)
    s.scale("main", "aaa", replicas)
    for _ in range(4):
        s.settle()
    status: dict[str, Any] = {"current": {"number": 1, "hash": "aaa"},
                              "stableSpec": spec(replicas, 2, 1, "img:1")}
    status, _ = s.run(spec(replicas, 2, gpus, "img:2"), "bbb", replicas, status, 10)
    status, lowest = s.run(spec(replicas, 2, gpus, "img:3"), "ccc", replicas, status, 40)
    assert not status.get("failed"), status.get("message")
    assert {(q.revision, q.ready) for q in s.pods if q.track == "canary"} == {("ccc", True)}
    assert lowest >= replicas - 2


def test_only_a_canary_pod_waiting_for_room_holds_its_deadline() -> None:
    """A canary pod without a node holds its revision's deadline only while it waits for room
    (not judged yet, or 'Insufficient nvidia.com/gpu'); one no node would take (a selector
    nothing matches, a claim never bound) is rolled back at the deadline as before."""
    from kubemaas_operator.observed import PodInfo
    from kubemaas_operator.rollout_checks import awaits_a_node

    def pending(message: str) -> list[PodInfo]:
        return [PodInfo(name="c", phase="Pending", revision="bbb", track="canary",
                        unschedulable_message=message),
                PodInfo(name="s", phase="Running", node="n", ready=True, revision="aaa")]

    assert awaits_a_node(pending(""), "bbb")
    assert awaits_a_node(pending("0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 "
                                 "node(s) didn't match Pod's node affinity/selector."), "bbb")
    assert not awaits_a_node(pending("0/4 nodes are available: 4 node(s) didn't match Pod's "
                                     "node affinity/selector."), "bbb")
    assert not awaits_a_node(pending("0/4 nodes are available: pod has unbound immediate "
                                     "PersistentVolumeClaims."), "bbb")
    assert not awaits_a_node(pending(""), "ccc")  # another revision's canary
