"""The testbed's topology files become the Node objects the scheduler sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubemaas_testbed import topology


def by_name() -> dict[str, dict[str, Any]]:
    return {n["metadata"]["name"]: n for n in topology.node_manifests(topology.load("default"))}


def test_default_topology_has_the_declared_nodes() -> None:
    assert sorted(by_name()) == ["cpu-0", "cpu-1", "gpu-a100-0", "gpu-a100-1", "gpu-h100-0",
                                 "gpu-h100-1", "gpu-mig-0"]


def test_gpu_nodes_carry_feature_discovery_labels_capacity_and_taint() -> None:
    node = by_name()["gpu-h100-0"]
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["spec"]["taints"] == [topology.GPU_TAINT]
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}


def test_mig_node_counts_only_whole_gpus_as_nvidia_gpu() -> None:
    node = by_name()["gpu-mig-0"]
    allocatable = node["status"]["allocatable"]
    assert allocatable["nvidia.com/gpu"] == "2"
    assert allocatable["nvidia.com/mig-1g.10gb"] == "28"
    assert allocatable["nvidia.com/mig-3g.40gb"] == "4"
    assert node["metadata"]["labels"]["nvidia.com/mig.strategy"] == "mixed"


def test_cpu_nodes_have_no_gpu_and_no_taint() -> None:
    node = by_name()["cpu-0"]
    assert "nvidia.com/gpu" not in node["status"]["allocatable"]
    assert node["spec"] == {}


def test_a_missing_topology_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(topology.TopologyError, match="no topology file"):
        topology.load("no-such-topology")
    empty = tmp_path / "empty.yaml"
    empty.write_text("nodes: []\n")
    with pytest.raises(topology.TopologyError, match="non-empty list"):
        topology.load(str(empty))
