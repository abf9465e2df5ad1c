"""quota_room: whether the namespace's ResourceQuotas hold one more pod, read ahead (pure)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from kubemaas_operator.quota_room import QuotaInfo, no_room, pod_amount, quota_info


def pod(gpus: int = 1, cpu: str | None = "2", memory: str | None = None,
        **extra: Any) -> dict[str, Any]:
    limits: dict[str, str] = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    requests: dict[str, str] = {}
    if cpu is not None:
        requests["cpu"] = cpu
    if memory is not None:
        limits["memory"] = memory  # a request not given is the limit
    return {"containers": [{"name": "runtime", "resources": {"limits": limits,
                                                           "requests": requests}}], **extra}


def quota(name: str, hard: dict[str, str], used: dict[str, str], **spec: Any) -> QuotaInfo:
    return quota_info(name, spec, {"hard": hard, "used": used})


def test_a_gpu_quota_with_no_room_names_itself_in_our_words() -> None:
    full = quota("gpus", {"requests.nvidia.com/gpu": "2"}, {"requests.nvidia.com/gpu": "2"})
    assert no_room([full], pod()) == (
        "gpus", "requests.nvidia.com/gpu: 2 of 2 used, one more pod of the new revision needs 1 "
                "(hard limit minus used, read ahead)")
    room = quota("gpus", {"requests.nvidia.com/gpu": "3"}, {"requests.nvidia.com/gpu": "2"})
    assert no_room([room], pod()) is None
    assert no_room([room], pod(gpus=2)) is not None  # a pod of 2 GPUs does not fit in 1
    assert no_room([], pod()) is None
    # a quota the controller has not counted yet (no used): nothing used
    assert no_room([quota("gpus", {"requests.nvidia.com/gpu": "1"}, {})], pod()) is None


def test_pod_counts_cpu_memory_and_the_first_full_quota_by_name() -> None:
    pods = quota("b-pods", {"pods": "4", "count/pods": "9"}, {"pods": "4", "count/pods": "4"})
    cpu = quota("a-cpu", {"requests.cpu": "5", "limits.memory": "10Gi"},
                {"requests.cpu": "3500m", "limits.memory": "4Gi"})
    assert no_room([cpu], pod(cpu="1500m")) is None  # 3.5 + 1.5 fits 5 exactly
    assert no_room([pods, cpu], pod(cpu="1600m")) == ("a-cpu", (
        "requests.cpu: 3500m of 5 used, one more pod of the new revision needs 1.6 "
        "(hard limit minus used, read ahead)"))
    assert no_room([pods, cpu], pod(cpu="1")) is not None and no_room(
        [pods, cpu], pod(cpu="1"))[0] == "b-pods"  # type: ignore[index]
    assert no_room([cpu], pod(cpu="1", memory="6Gi")) is None  # 4Gi + 6Gi fits 10Gi
    assert no_room([cpu], pod(cpu="1", memory="7Gi"))[1].startswith(  # type: ignore[index]
        "limits.memory: 4Gi of 10Gi used")
    bare = quota("bare", {"cpu": "2"}, {"cpu": "1"})  # a bare cpu is requests.cpu
    assert no_room([bare], pod(cpu="1")) is None and no_room([bare], pod(cpu="2")) is not None


def test_what_cannot_be_known_gives_no_verdict() -> None:
    # cpu not stated by the pod: a LimitRange default decides what it asks
    assert no_room([quota("c", {"requests.cpu": "1"}, {"requests.cpu": "1"})],
                   pod(cpu=None)) is None
    # a scoped quota may not count this pod at all
    scoped = quota("s", {"requests.nvidia.com/gpu": "1"}, {"requests.nvidia.com/gpu": "1"},
                   scopes=["BestEffort"])
    assert no_room([scoped], pod()) is None
    # not a pod's: services, other kinds' counts, a bare extended resource
    other = quota("o", {"services": "1", "count/deployments.apps": "1", "nvidia.com/gpu": "1"},
                  {"services": "1", "count/deployments.apps": "1", "nvidia.com/gpu": "1"})
    assert no_room([other], pod()) is None
    # a quantity that does not parse is skipped, not a crash
    assert no_room([quota("bad", {"requests.nvidia.com/gpu": "lots"},
                          {"requests.nvidia.com/gpu": "1"})], pod()) is None
    # a model without GPUs under a GPU quota: it needs none
    assert no_room([quota("g", {"requests.nvidia.com/gpu": "0"}, {})], pod(gpus=0)) is None


def test_a_pod_counts_its_largest_init_container_and_its_overhead() -> None:
    spec = pod(cpu="1", overhead={"cpu": "250m"}, initContainers=[
        {"name": "fetch", "resources": {"requests": {"cpu": "3"}}}])
    assert pod_amount(spec, "requests", "cpu") == Decimal("3.25")
    assert pod_amount(spec, "limits", "cpu") is None
    assert pod_amount(pod(gpus=2), "requests", "nvidia.com/gpu") == 2
