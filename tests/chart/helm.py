"""helm from the testbed's binaries (hack/build-testbed builds it), and the chart's paths."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubemaas"
PREVIOUS = Path(__file__).parent / "fixtures" / "kubemaas-0.0.1.tgz"
RBAC = ROOT / "operator" / "kubemaas_operator" / "rbac" / "operator.yaml"
KUBE_VERSION = "1.36.3"
# helm's config, cache and data in a directory of this process: test runs side by side on one
# machine do not share (or race on) ~/.config/helm.
HELM_HOME = Path(tempfile.mkdtemp(prefix="kubemaas-helm-"))


def helm_binary() -> str:
    from kubemaas_testbed.binaries import find

    found = find("helm")
    if found is None:
        raise AssertionError("helm is not among the testbed's binaries: run hack/build-testbed")
    return str(found)


def helm(*args: str, kubeconfig: Path | None = None, check: bool = True,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [helm_binary(), *args]
    if kubeconfig is not None:
        command.append(f"--kubeconfig={kubeconfig}")
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT / ".state" / "helm"),
                                 "HELM_CACHE_HOME": str(ROOT / ".state" / "helm" / "cache"),
                                 "HELM_CONFIG_HOME": str(ROOT / ".state" / "helm" / "config"),
                                 "HELM_DATA_HOME": str(ROOT / ".state" / "helm" / "data")})
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stderr}{result.stdout}")
    return result


def render_chart(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """helm template of the chart for the tests' Kubernetes version (helm's own default, 1.20,
    is older than the chart's kubeVersion)."""
    return helm("template", "x", str(CHART), "--kube-version", KUBE_VERSION, *args, check=check)


def template(*args: str, namespace: str = "kubemaas-system") -> str:
    return helm("template", "kubemaas", str(CHART), "--namespace", namespace,
                "--kube-version", KUBE_VERSION, *args).stdout


def objects(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    raise AssertionError(f"no {kind} {name or ''} among {[d['kind'] for d in docs]}")
