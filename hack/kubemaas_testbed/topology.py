"""Topology files -> kwok-managed Node manifests (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TOPOLOGY_DIR = Path(__file__).parent / "topologies"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
KWOK_ANNOTATION = "kwok.x-k8s.io/node"


class TopologyError(ValueError):
    """A topology file that does not describe nodes we can make."""


def load(name_or_path: str) -> list[dict[str, Any]]:
    """Read a topology by name (topologies/<name>.yaml) or path; return its node groups."""
    path = Path(name_or_path)
    if not path.exists():
        path = TOPOLOGY_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise TopologyError(f"no topology file {name_or_path!r} (nor {path})")
    doc = yaml.safe_load(path.read_text()) or {}
    groups = doc.get("nodes")
    if not isinstance(groups, list) or not groups:
        raise TopologyError(f"{path}: expected a non-empty list under 'nodes'")
    for group in groups:
        if "name" not in group:
            raise TopologyError(f"{path}: every node group needs a name: {group}")
    return groups


def node_manifests(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        node_manifest(group, f"{group['name']}-{index}")
        for group in groups
        for index in range(int(group.get("count", 1)))
    ]


def node_manifest(group: dict[str, Any], name: str) -> dict[str, Any]:
    capacity: dict[str, str] = {
        "cpu": str(group.get("cpu", "32")),
        "memory": str(group.get("memory", "128Gi")),
        "pods": str(group.get("pods", 110)),
        "ephemeral-storage": str(group.get("ephemeralStorage", "1Ti")),
    }
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "kubemaas.io/node-group": group["name"],
        **group.get("labels", {}),
    }
    taints: list[dict[str, str]] = list(group.get("taints", []))
    gpu = group.get("gpu")
    if gpu:
        count = int(gpu["count"])
        mig: dict[str, dict[str, Any]] = gpu.get("mig", {})
        # Under the mixed MIG strategy only GPUs left whole count as nvidia.com/gpu.
        capacity[GPU_RESOURCE] = str(gpu.get("whole", count) if mig else count)
        labels.update({
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": gpu["product"],
            "nvidia.com/gpu.memory": str(gpu["memoryMiB"]),
            "nvidia.com/gpu.count": str(count),
        })
        if mig:
            labels["nvidia.com/mig.strategy"] = "mixed"
        for profile, slice_ in mig.items():
            capacity[f"nvidia.com/mig-{profile}"] = str(slice_["count"])
            labels[f"nvidia.com/mig-{profile}.count"] = str(slice_["count"])
            labels[f"nvidia.com/mig-{profile}.memory"] = str(slice_["memoryMiB"])
        taints.append(GPU_TAINT)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": {"taints": taints} if taints else {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }
