"""GPU placement and the capacity check (pure)."""

from __future__ import annotations

from typing import Any

from kubemaas_operator.api import parse_spec
from kubemaas_operator.scheduling import (
    NodeInfo,
    PendingDemand,
    check_capacity,
    free_after_demand,
    gpu_summary,
    may_land_on,
    owed_pods,
    pending_demand,
    placement,
)

TAINT = ({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},)


def node(name: str, product: str, gpus: int, memory: int = 81559, **extra: int) -> NodeInfo:
    return NodeInfo(name=name, labels={"nvidia.com/gpu.product": product,
                                       "nvidia.com/gpu.memory": str(memory),
                                       "nvidia.com/gpu.present": "true"},
                    taints=TAINT, allocatable={"nvidia.com/gpu": gpus, **extra})


H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-40GB"
NODES = [node("gpu-h100-0", H100, 8), node("gpu-h100-1", H100, 8),
         node("gpu-a100-0", A100, 8, 40960), node("gpu-a100-1", A100, 8, 40960),
         NodeInfo(name="gpu-mig-0", labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                  taints=TAINT, allocatable={"nvidia.com/gpu": 2, "nvidia.com/mig-1g.10gb": 28,
                                             "nvidia.com/mig-3g.40gb": 4})]


def spec(**extra: Any) -> Any:
    return parse_spec({"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
                       "runtime": {"image": "img"}, **extra})


def test_cpu_model_stays_off_gpu_nodes() -> None:
    p = placement(spec())
    terms = p.affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [
        {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}]}]
    assert p.tolerations == ()
    assert "nvidia.com/gpu" not in p.limits


def test_cpu_model_allowed_on_gpu_nodes() -> None:
    assert placement(spec(scheduling={"allowGPUNodes": True})).affinity == {}


def test_gpu_model_placement() -> None:
    p = placement(spec(gpu={"count": 2, "products": [H100, A100], "minMemory": "40Gi"}))
    assert p.limits["nvidia.com/gpu"] == "2" and p.requests["nvidia.com/gpu"] == "2"
    exprs = p.affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]
    assert {"key": "nvidia.com/gpu.product", "operator": "In", "values": [A100, H100]} in exprs
    assert {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["40959"]} in exprs
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in p.tolerations


def test_mig_placement_requests_the_mig_resource() -> None:
    p = placement(spec(gpu={"count": 1, "migProfile": "1g.10gb"}))
    assert p.limits == {"nvidia.com/mig-1g.10gb": "1"}


def test_user_affinity_terms_are_anded_with_ours() -> None:
    user = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In",
                                                     "values": ["a"]}]},
                              {"matchExpressions": [{"key": "zone", "operator": "In",
                                                     "values": ["b"]}]}]}}}
    p = placement(spec(gpu={"products": [H100]}, scheduling={"affinity": user}))
    terms = p.affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert len(terms) == 2
    for term in terms:
        assert term["matchExpressions"][-1]["key"] == "nvidia.com/gpu.product"


def test_fits_when_free() -> None:
    cap = check_capacity(spec(gpu={"count": 8, "products": [H100]}), NODES, {}, 2)
    assert cap.fits and cap.room == 2


def test_insufficient_gpu_says_the_numbers() -> None:
    used = {"gpu-h100-0": {"nvidia.com/gpu": 8}, "gpu-h100-1": {"nvidia.com/gpu": 4}}
    cap = check_capacity(spec(gpu={"count": 8, "products": [H100]}), NODES, used, 2)
    assert not cap.fits and cap.reason == "InsufficientGPU" and cap.room == 0
    assert "needs 2 replica(s) x 8 nvidia.com/gpu" in cap.message
    assert "16 in all" in cap.message
    assert f"{H100}: 4 free (gpu-h100-0 0, gpu-h100-1 4)" in cap.message
    assert cap.summary == "InsufficientGPU: needs 2x8 gpu, 4 free on H100-80GB-HBM3"


def test_no_node_with_that_many_gpus() -> None:
    cap = check_capacity(spec(gpu={"count": 16}), NODES, {}, 1)
    assert not cap.fits and cap.room == 0
    assert cap.reason == "GPURequestTooLarge" and cap.never
    assert "largest node it may use has 8 (gpu-h100-1" in cap.message
    assert cap.summary == ("GPURequestTooLarge: needs 16 gpu per replica, the largest node has 8 "
                           "(gpu-h100-1)")


def test_too_large_counts_only_nodes_the_model_may_use() -> None:
    # 9 H100s: the largest H100 node has 8, whatever is free; a cordoned bigger node counts
    # (it may come back), so that is InsufficientGPU, not "never".
    cap = check_capacity(spec(gpu={"count": 9, "products": [H100]}), NODES, {}, 1)
    assert cap.reason == "GPURequestTooLarge" and "has 8" in cap.message
    big = NodeInfo(name="big", labels={"nvidia.com/gpu.product": H100}, taints=TAINT,
                   allocatable={"nvidia.com/gpu": 16}, unschedulable=True)
    cap = check_capacity(spec(gpu={"count": 9, "products": [H100]}), [*NODES, big], {}, 1)
    assert cap.reason == "InsufficientGPU" and not cap.never
    # A request that fits a node but not the free GPUs now is "not now".
    used = {n.name: {"nvidia.com/gpu": 8} for n in NODES}
    cap = check_capacity(spec(gpu={"count": 8}), NODES, used, 1)
    assert cap.reason == "InsufficientGPU" and not cap.never


def test_unknown_product_lists_other_nodes() -> None:
    cap = check_capacity(spec(gpu={"products": ["NVIDIA-B200"]}), NODES, {}, 1)
    assert not cap.fits and cap.reason == "UnknownGPUProduct" and cap.never
    assert "no node offers NVIDIA-B200" in cap.message
    assert f"offer NVIDIA-A100-SXM4-40GB, NVIDIA-A100-SXM4-80GB, {H100}" in cap.message
    assert cap.summary == ("UnknownGPUProduct: no node offers NVIDIA-B200; nodes offer "
                           "A100-SXM4-40GB, A100-SXM4-80GB, H100-80GB-HBM3")
    # One known product among those named is enough: then it is about capacity.
    used = {n.name: {"nvidia.com/gpu": 8} for n in NODES}
    cap = check_capacity(spec(gpu={"products": ["NVIDIA-B200", H100]}), NODES, used, 1)
    assert cap.reason == "InsufficientGPU"
    # No GPU node at all (kind without the device plugin): waiting for nodes, not "never".
    cap = check_capacity(spec(gpu={"products": ["NVIDIA-B200"]}), [], {}, 1)
    assert cap.reason == "InsufficientGPU"


def test_min_memory_excludes_small_gpus() -> None:
    used = {"gpu-h100-0": {"nvidia.com/gpu": 8}, "gpu-h100-1": {"nvidia.com/gpu": 8}}
    cap = check_capacity(spec(gpu={"count": 1, "minMemory": "80Gi"}), NODES, used, 1)
    assert not cap.fits  # A100-40GB nodes are free but too small; the MIG node has no label


def test_mig_capacity() -> None:
    s = spec(gpu={"count": 1, "migProfile": "3g.40gb"})
    assert check_capacity(s, NODES, {}, 4).fits
    cap = check_capacity(s, NODES, {}, 5)
    assert not cap.fits and "mig-3g.40gb" in cap.message


def test_untolerated_taint_and_cordon_exclude_nodes() -> None:
    tainted = NodeInfo(name="n", labels={"nvidia.com/gpu.product": H100},
                       taints=({"key": "dedicated", "value": "x", "effect": "NoSchedule"},),
                       allocatable={"nvidia.com/gpu": 8})
    cordoned = NodeInfo(name="c", labels={"nvidia.com/gpu.product": H100},
                        allocatable={"nvidia.com/gpu": 8}, unschedulable=True)
    assert not check_capacity(spec(gpu={}), [tainted, cordoned], {}, 1).fits
    tolerating = spec(gpu={}, scheduling={"tolerations": [{"key": "dedicated",
                                                            "operator": "Exists"}]})
    assert check_capacity(tolerating, [tainted], {}, 1).fits


def test_cpu_model_needs_no_gpu_capacity() -> None:
    assert check_capacity(spec(), [], {}, 3).fits


def test_gpu_summary() -> None:
    assert gpu_summary(spec()) == "-"
    assert gpu_summary(spec(gpu={"products": [H100]})) == f"1x{H100}"
    assert gpu_summary(spec(gpu={"count": 2, "products": [H100, A100]}), [H100]) == f"2x{H100}"
    assert gpu_summary(spec(gpu={"count": 2, "products": [H100, A100]})) == f"2x{A100}|{H100}"
    assert gpu_summary(spec(gpu={"migProfile": "1g.10gb"})) == "1xmig-1g.10gb"


# ------------------------------------------------------------- pending pods count as demand

def _h100_pod(name: str, gpus: int = 1, **pod_spec: Any) -> PendingDemand:
    """A Pending pod as another H100 model's replacement would render it."""
    model = spec(gpu={"count": gpus, "products": [H100]})
    place = placement(model)
    return pending_demand(name, {"affinity": place.affinity,
                                 "tolerations": list(place.tolerations), **pod_spec},
                          {"nvidia.com/gpu": gpus})


def test_a_gpu_freed_for_a_waiting_pod_is_no_room_for_a_surge() -> None:
    """100 models replacing on a full cluster: model B's old pod gave its GPU back and B's new
    pod waits for it; model A must not see that GPU as room for a surge."""
    nodes = [node("gpu-h100-0", H100, 8), node("gpu-h100-1", H100, 8)]
    used = {"gpu-h100-0": {"nvidia.com/gpu": 7}, "gpu-h100-1": {"nvidia.com/gpu": 8}}
    a = spec(gpu={"count": 1, "products": [H100]})
    assert check_capacity(a, nodes, used, 3).room == 1  # without the demand: room for one
    waiting = [_h100_pod("models/b-new")]
    assert check_capacity(a, nodes, used, 3, pending=waiting).room == 0
    # two free GPUs and one waiting pod: one is still free for a surge
    used["gpu-h100-1"] = {"nvidia.com/gpu": 7}
    assert check_capacity(a, nodes, used, 3, pending=waiting).room == 1
    assert check_capacity(a, nodes, used, 3, pending=[*waiting, _h100_pod("x/c")]).room == 0


def test_waiting_pods_that_cannot_land_on_matching_nodes_take_nothing() -> None:
    nodes = [node("gpu-h100-0", H100, 8), node("gpu-a100-0", A100, 8, 40960)]
    used = {"gpu-h100-0": {"nvidia.com/gpu": 7}, "gpu-a100-0": {"nvidia.com/gpu": 7}}
    a = spec(gpu={"count": 1, "products": [H100]})
    a100_pod = pending_demand("x/a100", {
        "tolerations": list(TAINT),
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": [A100]}]}]}}}},
        {"nvidia.com/gpu": 1})
    untolerated = pending_demand("x/plain", {}, {"nvidia.com/gpu": 1})  # the GPU taint
    pinned = pending_demand("x/pinned", {"nodeSelector": {"kubernetes.io/hostname": "x"},
                                         "tolerations": list(TAINT)}, {"nvidia.com/gpu": 1})
    mig = pending_demand("x/mig", {"tolerations": list(TAINT)}, {"nvidia.com/mig-1g.10gb": 1})
    for demand in (a100_pod, untolerated, pinned, mig):
        assert check_capacity(a, nodes, used, 1, pending=[demand]).room == 1, demand.name


def test_a_waiting_pod_lands_where_most_is_free_and_waits_where_nothing_fits() -> None:
    nodes = [node("n0", H100, 8), node("n1", H100, 8)]
    used = {"n0": {"nvidia.com/gpu": 6}, "n1": {"nvidia.com/gpu": 7}}
    free = free_after_demand(nodes, used, [_h100_pod("x/p")])
    assert (free["n0"]["nvidia.com/gpu"], free["n1"]["nvidia.com/gpu"]) == (1, 1)
    # a 4-GPU pod fits nowhere: it waits on the node with the most free and takes what is there
    free = free_after_demand(nodes, used, [_h100_pod("x/big", 4)])
    assert (free["n0"]["nvidia.com/gpu"], free["n1"]["nvidia.com/gpu"]) == (0, 1)
    # a pod that asks for more than any node has can never land: no demand
    free = free_after_demand(nodes, used, [_h100_pod("x/huge", 9)])
    assert (free["n0"]["nvidia.com/gpu"], free["n1"]["nvidia.com/gpu"]) == (2, 1)


def test_node_affinity_operators() -> None:
    n = NodeInfo(name="n0", labels={"a": "1", "mem": "80"}, allocatable={"nvidia.com/gpu": 1})

    def lands(*exprs: dict[str, Any], fields: list[dict[str, Any]] | None = None) -> bool:
        term: dict[str, Any] = {"matchExpressions": list(exprs)}
        if fields:
            term["matchFields"] = fields
        return may_land_on(PendingDemand("p", {"nvidia.com/gpu": 1}, node_terms=(term,)), n)
    assert lands({"key": "a", "operator": "In", "values": ["1"]})
    assert not lands({"key": "a", "operator": "NotIn", "values": ["1"]})
    assert lands({"key": "b", "operator": "DoesNotExist"})
    assert not lands({"key": "b", "operator": "Exists"})
    assert lands({"key": "mem", "operator": "Gt", "values": ["40"]})
    assert not lands({"key": "mem", "operator": "Lt", "values": ["40"]})
    assert lands(fields=[{"key": "metadata.name", "operator": "In", "values": ["n0"]}])
    assert not lands(fields=[{"key": "metadata.name", "operator": "In", "values": ["n1"]}])
    cordoned = NodeInfo(name="n0", unschedulable=True, allocatable={"nvidia.com/gpu": 1})
    assert not may_land_on(PendingDemand("p", {"nvidia.com/gpu": 1}), cordoned)


def test_pods_a_deployment_owes_count_as_demand() -> None:
    """Between an old pod's deletion and its successor's creation the GPU is spoken for."""
    nodes = [node("n0", H100, 8)]
    used = {"n0": {"nvidia.com/gpu": 7}}  # the old pod is gone: one GPU looks free
    a = spec(gpu={"count": 1, "products": [H100]})
    template = _h100_pod("models/b")
    assert owed_pods(template, 2, 2) == [] and owed_pods(template, 2, 3) == []
    owed = owed_pods(template, 2, 1)
    assert [d.name for d in owed] == ["models/b#0"]
    assert check_capacity(a, nodes, used, 3).room == 1
    assert check_capacity(a, nodes, used, 3, pending=owed).room == 0
