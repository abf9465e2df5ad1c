"""The pure modules import neither kopf nor the Kubernetes client (GUIDE sections 1-2)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ["kubemaas_operator.api", "kubemaas_operator.render", "kubemaas_operator.scheduling",
        "kubemaas_operator.rollout", "kubemaas_operator.rollout_strategy",
        "kubemaas_operator.canary", "kubemaas_operator.gpu_ratio",
        "kubemaas_operator.rollout_checks", "kubemaas_operator.floor",
        "kubemaas_operator.render.base", "kubemaas_operator.render.tracks",
        "kubemaas_operator.status", "kubemaas_operator.observed", "kubemaas_operator.drift",
        "kubemaas_operator.quantity",
        "kubemaas_operator.config", "kubemaas_operator.workqueue",
        "kubemaas_operator.standby", "kubemaas_operator.pod_life",
        "kubemaas_operator.render.inference", "kubemaas_operator.modelcache.api",
        "kubemaas_operator.modelcache.render", "kubemaas_operator.modelcache.progress",
        "kubemaas_operator.modelcache.status", "kubemaas_operator.modelcache.evict",
        "kubemaas_operator.modelcache.mount", "kubemaas_operator.modelcache.implicit",
        "kubemaas_operator.api.autocache", "kubemaas_operator.modelcache.optimize",
        "kubemaas_operator.render.cached_optimization", "kubemaas_operator.sizing",
        "kubemaas_operator.engines", "kubemaas_operator.timestamps"]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_library(module: str) -> None:
    code = (f"import sys, {module}; bad = [m for m in ('kopf', 'kubernetes', 'urllib3', "
            "'aiohttp') if m in sys.modules]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"{module} pulls in {out}"


def test_only_k8s_layer_uses_the_client() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "operator" / "kubemaas_operator"
    offenders = []
    for path in root.rglob("*.py"):
        if "k8s" in path.relative_to(root).parts:
            continue
        text = path.read_text()
        if "import kubernetes" in text or "from kubernetes" in text:
            offenders.append(str(path.relative_to(root)))
    assert not offenders, f"only k8s/ may import the kubernetes client: {offenders}"
