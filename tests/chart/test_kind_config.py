"""kind-config.yaml (for users with Docker; kind cannot run here): a control plane and workers,
one labelled and tainted as a GPU node with the very keys the operator's placement uses."""

from __future__ import annotations

import yaml

from kubemaas_operator import scheduling

from .helm import ROOT


def test_kind_config_has_a_gpu_worker_the_operator_recognises() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [n["role"] for n in config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 2
    gpu = [n for n in config["nodes"] if scheduling.PRODUCT_LABEL in n.get("labels", {})]
    assert len(gpu) == 1
    labels = gpu[0]["labels"]
    assert labels[scheduling.PRESENT_LABEL] == "true"
    assert int(labels[scheduling.MEMORY_LABEL]) > 0
    (patch,) = [yaml.safe_load(p) for p in gpu[0]["kubeadmConfigPatches"]]
    (taint,) = patch["nodeRegistration"]["taints"]
    assert taint["key"] == scheduling.GPU_TAINT_KEY and taint["effect"] == "NoSchedule"
