"""What a real-node test's timeout says of its pods and node (tests/cluster/explain.py)."""

from __future__ import annotations

from pathlib import Path

from tests.cluster.explain import describe_event, describe_node, describe_pod, free_disk


def test_a_pending_pod_says_why_it_was_not_scheduled() -> None:
    pod = {"metadata": {"name": "llm"}, "spec": {},
           "status": {"phase": "Pending", "conditions": [
               {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 1 node(s) had untolerated taint "
                           "{node.kubernetes.io/disk-pressure: }."}]}}
    lines = describe_pod(pod)
    assert lines[0] == "llm: Pending on (unscheduled)"
    assert lines[1].startswith("  PodScheduled=False Unschedulable 0/3 nodes")
    assert "disk-pressure" in lines[1]


def test_a_started_pod_gives_its_containers_states_and_only_the_conditions_not_met() -> None:
    pod = {"metadata": {"name": "llm"}, "spec": {"nodeName": "real-0"},
           "status": {"phase": "Running",
                      "conditions": [{"type": "PodScheduled", "status": "True"},
                                     {"type": "Ready", "status": "False",
                                      "reason": "ContainersNotReady"}],
                      "containerStatuses": [{
                          "name": "runtime", "restartCount": 2,
                          "state": {"waiting": {"reason": "CrashLoopBackOff",
                                                "message": "back-off 20s"}}}]}}
    assert describe_pod(pod) == [
        "llm: Running on real-0",
        "  Ready=False ContainersNotReady",
        "  container runtime: waiting CrashLoopBackOff back-off 20s, restarts 2"]


def test_an_evicted_pod_gives_the_kubelets_reason() -> None:
    pod = {"metadata": {"name": "llm"}, "spec": {"nodeName": "real-0"},
           "status": {"phase": "Failed", "reason": "Evicted",
                      "message": "The node was low on resource: ephemeral-storage."}}
    assert describe_pod(pod)[0] == ("llm: Failed on real-0 "
                                    "(Evicted: The node was low on resource: ephemeral-storage.)")


def test_the_node_names_its_unusual_conditions_and_its_taints() -> None:
    node = {"spec": {"taints": [{"key": "kubemaas.io/real-node", "effect": "NoSchedule"},
                                {"key": "node.kubernetes.io/disk-pressure",
                                 "effect": "NoSchedule"}]},
            "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False",
                 "reason": "KubeletHasSufficientMemory"},
                {"type": "DiskPressure", "status": "True", "reason": "KubeletHasDiskPressure"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}
    assert describe_node(node) == (
        "MemoryPressure=False, DiskPressure=True (KubeletHasDiskPressure), Ready=True; "
        "taints: kubemaas.io/real-node:NoSchedule, node.kubernetes.io/disk-pressure:NoSchedule")


def test_an_event_gives_its_time_object_count_and_message() -> None:
    event = {"lastTimestamp": "2026-12-04T21:00:00Z", "type": "Warning",
             "reason": "FailedScheduling", "count": 3,
             "involvedObject": {"kind": "Pod", "name": "llm"}, "message": "taint\n"}
    assert describe_event(event) == ("2026-12-04T21:00:00Z Warning FailedScheduling Pod/llm (x3): "
                                     "taint")


def test_free_disk_reads_the_filesystem_of_the_path(tmp_path: Path) -> None:
    free, total = free_disk(tmp_path).split(" GiB of ")
    assert 0 <= float(free) <= float(total.removesuffix(" GiB"))
