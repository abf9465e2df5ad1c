"""Golden files of `helm template` (tests/golden/chart/). After an intended change:

    KUBEMAAS_UPDATE_GOLDEN=1 .venv/bin/pytest tests/chart/test_chart_golden.py

and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helm import ROOT, template

GOLDEN = ROOT / "tests" / "golden" / "chart"
UPDATE = os.environ.get("KUBEMAAS_UPDATE_GOLDEN") == "1"

CASES = {
    "default": [],
    "peering": ["--set", "replicaCount=2"],
    "production": ["--namespace", "ml-platform",
                   "--set", "image.digest=sha256:" + "ab" * 32,
                   "--set", "runtime.image.repository=registry.example.com/kubemaas-runtime",
                   "--set", "runtime.image.tag=0.1.0-gpu",
                   "--set", "serviceMonitor.enabled=true",
                   "--set", "serviceMonitor.labels.release=prometheus",
                   "--set", "nodeSelector.node-role\\.kubernetes\\.io/control-plane=",
                   "--set", "priorityClassName=system-cluster-critical",
                   "--set", "operator.logLevel=DEBUG",
                   "--set", "operator.resyncSeconds=30",
                   "--set", "operator.maxConcurrentReconciles=128"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_helm_template_golden(case: str) -> None:
    args = CASES[case]
    namespace = "kubemaas-system"
    if args[:1] == ["--namespace"]:
        namespace, args = args[1], args[2:]
    text = template(*args, namespace=namespace)
    golden: Path = GOLDEN / f"{case}.yaml"
    if UPDATE:
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}; run with KUBEMAAS_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), (
        f"helm template ({case}) changed; if intended, rerun with KUBEMAAS_UPDATE_GOLDEN=1 "
        "and review the diff")
