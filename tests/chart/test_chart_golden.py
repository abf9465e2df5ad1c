"""Golden files of `helm template` (tests/golden/chart/). After an intended change:

    KUBEMAAS_UPDATE_GOLDEN=1 .venv/bin/pytest tests/chart/test_chart_golden.py

(refused when CI is set; the run ends with the list of files it changed) and review the diff.
A golden file that no case produces fails test_no_stale_chart_golden_files."""

from __future__ import annotations

import pytest

from tests.goldens import check, stale

from .helm import ROOT, template

GOLDEN = ROOT / "tests" / "golden" / "chart"

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
    check(GOLDEN / f"{case}.yaml", text, f"helm template ({case})")


def test_no_stale_chart_golden_files() -> None:
    extra = stale(GOLDEN, [GOLDEN / f"{case}.yaml" for case in CASES])
    assert not extra, (f"chart golden files that no case produces: {[str(p) for p in extra]}; "
                       "KUBEMAAS_UPDATE_GOLDEN=1 removes them")
