"""Plain rollouts (no canary) whose pods change size, or whose count the autoscaler changes
mid-rollout: the surge room is counted at the new revision's pod size with the model's own pods
holding their GPUs (rollout_room.surge_room). Pure: rollout.plan driven over passes against
tests/unit/rollout_sim.py."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.rollout_sim import Sim
from tests.unit.test_rollout import RAW

from kubemaas_operator.api import parse_spec
from kubemaas_operator.observed import PodInfo
from kubemaas_operator.rollout_room import surge_room
from kubemaas_operator.scheduling import PRODUCT_LABEL, NodeInfo

AUTO = {"signal": "queue", "target": 4, "minReplicas": 1, "maxReplicas": 8}


def spec(replicas: int | None, gpus: int, image: str, **rollout: Any) -> dict[str, Any]:
    """RAW with `gpus` per pod; replicas None: the autoscaler owns them."""
    out = {**RAW, "gpu": {**RAW["gpu"], "count": gpus}, "runtime": {"image": image},
           "rollout": {"progressDeadlineSeconds": 60, **rollout}}
    if replicas is None:
        del out["replicas"]
        out["autoscaling"] = AUTO
    else:
        out["replicas"] = replicas
    return out


def running(gpus: int, sizes: dict[str, int], replicas: int, first: dict[str, Any]) -> tuple[
        Sim, dict[str, Any]]:
    """`replicas` of aaa Ready on `gpus` GPUs; the status with aaa current (spec `first`)."""
    s = Sim(gpus=gpus, sizes=sizes, main_n=replicas)
    s.scale("main", "aaa", replicas)
    s.settle()
    s.settle()
    return s, {"current": {"number": 1, "hash": "aaa"}, "stableSpec": first}


def test_a_one_gpu_revision_mid_rollout_does_not_surge_into_held_gpus() -> None:
    """2 x 2 GPU on 4 GPUs roll to 1-GPU pods (bbb) in place; another workload takes the GPU
    the smaller pods left free, and a third revision of 1-GPU pods (ccc) comes. Counted with
    the model's pods as free (4 one-GPU pods beside 2 replicas), it surged: maxUnavailable 0,
    its pod Pending beside the Ready ones (for good here, where no pod reports Unschedulable),
    and the deadline rolled a healthy revision back. No GPU is free for it: it replaces in
    place."""
    s, status = running(4, {"aaa": 2, "bbb": 1, "ccc": 1}, 2, spec(2, 2, "img:1"))
    status, _ = s.run(spec(2, 1, "img:2"), "bbb", 2, status, 3)
    assert s.main_tpl == "bbb" and "aaa" in {q.revision for q in s.pods}
    s.others = s.free()  # another model's pending pod binds to what the 1-GPU pods left
    assert s.others >= 1
    status, lowest = s.run(spec(2, 1, "img:3"), "ccc", 2, status, 40)
    assert not status.get("failed"), status.get("message")
    assert sorted((q.revision, q.ready) for q in s.pods) == [("ccc", True)] * 2
    assert status["reason"] == "UpToDate" and lowest >= 1


@pytest.mark.parametrize(("gpus", "sizes", "replicas", "unavailable"), [
    (3, {"aaa": 1, "bbb": 2}, 1, 1),  # 1 x 1 GPU, 2 free: one 2-GPU pod fits beside it
    (7, {"aaa": 1, "bbb": 2}, 3, 0),  # 3 x 1 GPU, 4 free; maxUnavailable 0
    (3, {"aaa": 2, "bbb": 1}, 1, 1),  # 1 x 2 GPU, 1 free: one 1-GPU pod fits beside it
    (5, {"aaa": 1, "bbb": 2}, 2, 1),  # 2 x 1 GPU, 3 free: one 2-GPU pod fits beside them
])
def test_a_revision_of_another_pod_size_surges_into_the_gpus_free_for_it(
        gpus: int, sizes: dict[str, int], replicas: int, unavailable: int) -> None:
    """The room was counted in pods of the new size with the model's own GPUs as free: 3 GPUs
    hold one 2-GPU pod, none beside the one replica, so it waited (NoFreeGPU, 'replacing the
    only replica would leave none serving') with 2 GPUs free for its pod; 1 x 2 GPU on 3 GPUs
    rolling to 1-GPU pods likewise (held 3 // 2 = 1, none beside it). Now it surges, never
    below the replicas Ready."""
    s, status = running(gpus, sizes, replicas, spec(replicas, sizes["aaa"], "img:1"))
    status, lowest = s.run(spec(replicas, sizes["bbb"], "img:2", maxUnavailable=unavailable),
                           "bbb", replicas, status, 30)
    assert status["reason"] == "UpToDate", status.get("message")
    assert sorted((q.revision, q.ready) for q in s.pods) == [("bbb", True)] * replicas
    assert lowest >= replicas
    # recorded as what ran: the last pass (every pod new, the room theirs) is no wait
    # (1 x 1 GPU -> 2 GPUs on 3: "wait rollout", on the testbed too) nor a replacement
    assert status["history"][-1]["message"].endswith("(surge rollout)"), status["history"]


def test_the_autoscaler_filling_every_gpu_mid_surge_turns_it_into_a_replacement() -> None:
    """2 x 1 GPU on 4 GPUs surge to bbb (maxSurge 1, maxUnavailable 0); the autoscaler raises
    the count to 4, every GPU. The surge kept maxUnavailable 0 (a surge stays a surge unless a
    pod reports Unschedulable): no pod could go for the new ones, and the deadline rolled the
    revision back. No surge pod can ever bind: it replaces in place within maxUnavailable."""
    s, status = running(4, {"aaa": 1, "bbb": 1}, 2, spec(None, 1, "img:1"))
    status, _ = s.run(spec(None, 1, "img:2"), "bbb", 2, status, 1)
    assert status["strategy"] == "Surge"
    status, lowest = s.run(spec(None, 1, "img:2"), "bbb", 4, status, 40)
    assert not status.get("failed"), status.get("message")
    assert sorted((q.revision, q.ready) for q in s.pods) == [("bbb", True)] * 4
    assert status["reason"] == "UpToDate" and s.main_strategy == (0, 1)
    assert lowest >= 2


def test_a_count_fallen_to_one_replica_after_the_revision_was_applied_keeps_it_serving() -> None:
    """3 x 2 GPU on 7 GPUs replace in place (maxSurge 0, maxUnavailable 1); after one pass
    the autoscaler takes the count to 1. A single replica without allowDowntime waits, but the
    Deployment carried the new template already, and the wait gave it maxUnavailable 1: it took
    the only replica down (0 Ready). It waits with one pod beside it instead (maxSurge 1,
    maxUnavailable 0), which starts where a GPU is free."""
    s, status = running(7, {"aaa": 2, "bbb": 2}, 3, spec(None, 2, "img:1"))
    raw = spec(None, 2, "img:2", maxSurge=0, maxUnavailable=1)
    status, _ = s.run(raw, "bbb", 3, status, 1)
    assert s.main_tpl == "bbb"
    status, lowest = s.run(raw, "bbb", 1, status, 30)
    assert lowest >= 1
    assert [(q.revision, q.ready) for q in s.pods] == [("bbb", True)]
    assert status["reason"] == "UpToDate", status.get("message")


def test_surge_room_counts_the_model_s_pods_as_held() -> None:
    node = NodeInfo("n", labels={PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3"},
                    allocatable={"nvidia.com/gpu": 8})

    def pod(i: int, bound: bool = True, **kw: Any) -> PodInfo:
        return PodInfo(name=f"p{i}", phase="Running" if bound else "Pending",
                       node="n" if bound else "", **kw)
    one, two = parse_spec(spec(2, 1, "i")), parse_spec(spec(2, 2, "i"))
    pods = [pod(0), pod(1)]
    held = {"n": {"nvidia.com/gpu": 4}}  # the two pods hold 2 GPUs each
    assert surge_room(one, [node], {}, held, (), pods, 2) == 4  # 4 free GPUs: 4 one-GPU pods
    assert surge_room(two, [node], {}, held, (), pods, 2) == 2
    assert surge_room(two, [node], {"n": {"nvidia.com/gpu": 3}}, held, (), pods, 2) == 0
    # a pending pod holds nothing
    assert surge_room(two, [node], {}, held, (), [*pods, pod(2, False)], 2) == 2
    # a terminating pod's GPUs are held (the index counts them) and it counts with the
    # model's pods: the room does not drop while the Deployment controller replaces one
    assert surge_room(two, [node], {}, held, (), [pod(0), pod(1, terminating=True)], 2) == 2
    assert surge_room(two, [node], {}, held, (), pods, 0) is None  # nothing to surge beside
    assert surge_room(parse_spec({k: v for k, v in RAW.items() if k != "gpu"}), [node], {},
                      held, (), pods, 2) is None  # a CPU model: the scheduler places extras


def test_a_surge_to_larger_pods_stays_a_surge_while_an_old_pod_terminates() -> None:
    """2 x 1 GPU on 5 GPUs surge to 2-GPU pods (room for one beside them). When the Deployment
    controller deletes an old pod for an available new one, the old pod holds its GPU until it
    is gone (the operator's index counts it held) but was not counted among the model's pods:
    the room fell to 0, and with the pool at the new size empty (5 // 2 = 2 pods for 2
    replicas) the surge became a Replace (maxUnavailable 1) that took the other old replica
    down before the next new pod was available: 1 Ready. (1 x 1 GPU on 3 GPUs flipped to a
    Wait the same way on the testbed, tests/cluster/test_rollout_sizes.py; here that rollout
    completes in the same look.) A terminating pod counts with the model's pods."""
    s, status = running(5, {"aaa": 1, "bbb": 2}, 2, spec(2, 1, "img:1"))
    s.linger = True
    seen, lowest, lingered = [], 2, 0
    for _ in range(12):
        status, low = s.run(spec(2, 2, "img:2"), "bbb", 2, status, 1)
        seen.append(status.get("strategy"))
        lowest, lingered = min(lowest, low), lingered + any(q.terminating for q in s.pods)
    assert lingered >= 2  # each old pod was seen terminating by a look
    assert "Surge" in seen and "Wait" not in seen and "Replace" not in seen, seen
    assert lowest >= 2
    assert status["reason"] == "UpToDate", status.get("message")
    assert sorted((q.revision, q.ready) for q in s.pods) == [("bbb", True)] * 2


def test_a_surge_of_larger_pods_that_could_not_finish_waits_before_it_starts() -> None:
    """3 x 1 GPU roll to 2-GPU pods on 6 GPUs, maxUnavailable 0: room for the next surge pod
    (3 GPUs free) made it surge, and its last pod, beside 2 new pods and the last 1-GPU one
    (7 GPUs), stayed Pending for good: 2 of 3 replicas on the new revision, RolloutWaiting
    for ever (no pod reports Unschedulable here; where one does, maxUnavailable 0 leaves no
    replacement either). Now it waits before it starts, the serving revision untouched, and
    says why; on 7 GPUs the surge finishes."""
    s, status = running(6, {"aaa": 1, "bbb": 2}, 3, spec(3, 1, "img:1", maxUnavailable=0))
    status, lowest = s.run(spec(3, 2, "img:2", maxUnavailable=0), "bbb", 3, status, 30)
    assert sorted((q.revision, q.ready) for q in s.pods) == [("aaa", True)] * 3
    assert (status["strategy"], status["reason"]) == ("Wait", "NoFreeGPU")
    assert "a surge could not finish" in status["message"] and "7 nvidia.com/gpu" in (
        status["message"])
    s, status = running(7, {"aaa": 1, "bbb": 2}, 3, spec(3, 1, "img:1", maxUnavailable=0))
    status, lowest = s.run(spec(3, 2, "img:2", maxUnavailable=0), "bbb", 3, status, 30)
    assert sorted((q.revision, q.ready) for q in s.pods) == [("bbb", True)] * 3
    assert status["reason"] == "UpToDate" and lowest >= 3
