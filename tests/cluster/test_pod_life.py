"""The Reason column follows the pod's life, against the real control plane: Downloading while
the init container `fetch` runs, Loading while the engine runs but is not Ready, then Ready; an
engine that dies out of GPU memory at load is OutOfGPUMemory with its termination message.

The pods are simulated by kwok's pod-life stages (hack/kubemaas_testbed/stages/life.yaml:
`kubemaas.io/fake-failure: slow-start` spends 3 s in each stage; `gpu-oom` ends in
CrashLoopBackOff with torch's CUDA out-of-memory message). The `fetch` init container comes from
an administrator's template (the operator's templates ConfigMap), as any template may add one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import Operator
from tests.cluster.test_operator import apply, condition, status
from tests.cluster.test_reasons import _set_template
from tests.conftest import Kube
from tests.helpers import Poller, wait_for

pytestmark = pytest.mark.cluster

FAILURE_LABEL = "kubemaas.io/fake-failure"
TEMPLATE_KEY = "with-fetch"


def md(name: str, life: str, template: str | None = None) -> str:
    runtime: dict[str, Any] = {"image": "ghcr.io/kubemaas/runtime:0.1.0"}
    if template:
        runtime["template"] = template
    return yaml.safe_dump({
        "apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "s3://models/m.onnx", "format": "onnx"}, "runtime": runtime,
                 "podMetadata": {"labels": {FAILURE_LABEL: life}}}})


@pytest.fixture
def fetch_template(kube: Kube, operator: Operator) -> Iterator[str]:
    """The built-in Deployment template with an init container named fetch."""
    from kubemaas_operator.render import builtin_template

    template = builtin_template("deployment.yaml.j2")
    marker = "      containers:\n        - name: runtime\n"
    assert marker in template
    _set_template(kube, TEMPLATE_KEY, template.replace(marker, (
        '      initContainers: [{"name": "fetch", "image": "ghcr.io/kubemaas/runtime:0.1.0", '
        '"command": ["python", "-m", "kubemaas_runtime.fetch"]}]\n') + marker))
    yield TEMPLATE_KEY
    _set_template(kube, TEMPLATE_KEY, None)


@dataclass
class Reasons(Poller):
    """The distinct Ready reasons of one model, in the order the API server showed them."""

    kube: Kube
    namespace: str
    name: str
    seen: list[str] = field(default_factory=list)

    def poll(self) -> None:
        try:
            reason = condition(status(self.kube, self.namespace, self.name), "Ready").get(
                "reason")
        except Exception:  # not created yet
            return
        if reason and (not self.seen or self.seen[-1] != reason):
            self.seen.append(reason)


def test_downloading_then_loading_then_ready(kube: Kube, namespace: str,
                                             fetch_template: str) -> None:
    with Reasons(kube, namespace, "slow") as reasons:
        apply(kube, namespace, md("slow", "slow-start", fetch_template))
        st = wait_for(lambda: (lambda s: s if s.get("phase") == "Ready" else None)(
            status(kube, namespace, "slow")), timeout=60, what="the model to be Ready")
    reasons.poll()  # the sampler may have stopped between its last sample and Ready
    order = [r for r in reasons.seen if r in ("Downloading", "Loading", "Ready")]
    assert order == ["Downloading", "Loading", "Ready"], reasons.seen
    assert st["reason"] == "Ready"


def test_out_of_gpu_memory_is_told_with_the_message(kube: Kube, namespace: str,
                                                    operator: Operator) -> None:
    apply(kube, namespace, md("oom", "gpu-oom"))
    st = wait_for(lambda: (lambda s: s if s.get("reason", "").startswith("OutOfGPUMemory")
                           else None)(status(kube, namespace, "oom")), timeout=60,
                  what="OutOfGPUMemory in the Reason column")
    ready = condition(st, "Ready")
    assert st["phase"] == "Degraded" and ready["reason"] == "OutOfGPUMemory"
    assert "torch.OutOfMemoryError: CUDA out of memory" in ready["message"]
    assert "more GPUs" in ready["message"] and "maxModelLen" in ready["message"]
    assert "CrashLoopBackOff" not in st["reason"]
