"""A statically bound PersistentVolume and claim over a host directory, for tests and the demo.

The testbed has no storage provisioner: a test that needs a claim (`pvc://models/...`, a model
cache on a PVC) makes a hostPath PersistentVolume already bound to the claim it names. On the
real node the kubelet mounts the directory; on kwok's nodes nothing reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .node_config import LABEL as REAL_NODE_LABEL


def bound_host_volume(pv: str, directory: Path | str, namespace: str, claim: str, *,
                      writable: bool = False, on_real_node: bool = False) -> list[dict[str, Any]]:
    """The PersistentVolume ``pv`` on ``directory`` and the claim ``claim`` in ``namespace``
    bound to it: ReadOnlyMany, or ReadWriteMany when ``writable``. ``on_real_node`` pins the
    volume to the real node (as for a local volume), so the scheduler keeps every pod of the
    claim there; a pod mounting it through the claim is then never sent to a kwok node."""
    access = ["ReadWriteMany" if writable else "ReadOnlyMany"]
    spec: dict[str, Any] = {
        "capacity": {"storage": "1Gi"}, "accessModes": access, "storageClassName": "",
        "persistentVolumeReclaimPolicy": "Retain",
        "hostPath": {"path": str(directory), "type": "Directory"},
        "claimRef": {"namespace": namespace, "name": claim}}
    if on_real_node:
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": REAL_NODE_LABEL, "operator": "In", "values": ["true"]}]}]}}
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv}, "spec": spec},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": claim, "namespace": namespace},
         "spec": {"accessModes": access, "storageClassName": "", "volumeName": pv,
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]
