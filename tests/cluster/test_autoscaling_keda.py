"""Autoscaling on an inference signal with KEDA as the engine, against the real control plane:

- without KEDA, a model that scales on its queue falls back to the CPU HorizontalPodAutoscaler
  and says so (status.autoscaling, a Warning Event);
- with KEDA's CRDs and its operator running (built from its Go module, kubemaas_testbed.keda), the
  operator renders a ScaledObject instead, a changed target reaches it, a hand-edit is undone,
  and KEDA's own controller accepts it (its HPA keda-hpa-NAME, the Ready condition) and scales
  the Deployment to zero and back on the signal it reads from Prometheus.

The testbed has no Prometheus: a small HTTP server on 127.0.0.1 answers Prometheus's
/api/v1/query with the value the test sets, and records the queries KEDA sends (so the test
checks the query the operator rendered). Its Deployment's pods are kwok's, so the runtime's own
gauges are exercised by tests/runtime/test_batching.py, not here.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.cluster.conftest import ROOT, Operator, reconfigured
from tests.cluster.test_operator import apply, get, get_md_table, md, status
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

QUEUE = {"signal": "queue", "target": 4, "minReplicas": 1, "maxReplicas": 3}
CPU = {"image": "ghcr.io/kubemaas/runtime:0.1.0", "resources": {"cpu": "1"}}


class FakePrometheus:
    """Prometheus's instant-query API on 127.0.0.1: every query answers `value`."""

    def __init__(self) -> None:
        self.value = 0.0
        self.queries: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path != "/api/v1/query":
                    self.send_error(404)
                    return
                outer.queries.append(parse_qs(url.query).get("query", [""])[0])
                body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
                    {"metric": {}, "value": [time.time(), str(outer.value)]}]}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def keda(kube: Kube) -> Iterator[None]:
    """KEDA's CRDs and operator for this module's KEDA tests; removed afterwards, so that the
    rest of the session sees a cluster without KEDA again."""
    from kubemaas_testbed import keda as testbed_keda

    if not testbed_keda.built():  # built once, cached like the control plane
        subprocess.run(["nice", "-n", "10", str(ROOT / "hack" / "build-testbed"),
                        "--with-keda"], check=True)
    assert kube.log_dir is not None, "the KEDA fixture needs the session's own testbed"
    state = Path(kube.log_dir).parent
    testbed_keda.up(state, kube.kubeconfig)
    try:
        yield
    finally:
        # ScaledObjects carry KEDA's finalizer: let the running operator release them first.
        kube.kubectl("delete", "scaledobjects.keda.sh", "--all-namespaces", "--all",
                     "--timeout=60s", check=False)
        testbed_keda.down(state, Path(kube.kubeconfig))
        kube.kubectl("delete", "crd", *testbed_keda.crd_names(), "--wait=false", check=False)


def _events(kube: Kube, namespace: str, reason: str) -> list[dict[str, Any]]:
    out = json.loads(kube.kubectl("-n", namespace, "get", "events", "-o", "json").stdout)
    return [e for e in out["items"] if e.get("reason") == reason]


def _exists(kube: Kube, namespace: str, kind: str, name: str) -> bool:
    return kube.kubectl("-n", namespace, "get", kind, name, check=False).returncode == 0


def test_without_keda_a_queue_signal_falls_back_to_cpu_and_says_so(
        kube: Kube, namespace: str, operator: Operator) -> None:
    assert kube.kubectl("get", "crd", "scaledobjects.keda.sh", check=False).returncode != 0, (
        "this test needs a cluster without KEDA (it runs before the KEDA fixture)")
    apply(kube, namespace, md("q", runtime=CPU, autoscaling=QUEUE))
    hpa = wait_for(lambda: _exists(kube, namespace, "hpa", "q")
                   and get(kube, namespace, "hpa", "q"), timeout=30, what="the fallback HPA")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    st = wait_for(lambda: status(kube, namespace, "q").get("autoscaling"), timeout=30,
                  what="status.autoscaling")
    assert st["engine"] == "HorizontalPodAutoscaler" and st["reason"] == "KEDANotInstalled"
    assert "keda.sh/v1alpha1" in st["message"]
    (event,) = wait_for(lambda: _events(kube, namespace, "KEDANotInstalled"), timeout=30,
                        what="a KEDANotInstalled Event")
    assert event["type"] == "Warning"


def test_keda_scaledobject_follows_the_spec_and_keda_accepts_it(
        kube: Kube, namespace: str, operator: Operator, keda: None) -> None:
    prom = FakePrometheus()
    try:
        with reconfigured(operator, KUBEMAAS_OPERATOR_PROMETHEUS=prom.url):
            _scaledobject_lifecycle(kube, namespace, prom)
    finally:
        prom.close()


def _scaledobject_lifecycle(kube: Kube, namespace: str, prom: FakePrometheus) -> None:
    spec = {**QUEUE, "minReplicas": 0, "idleSeconds": 1, "scaleDownStabilizationSeconds": 30}
    apply(kube, namespace, md("q", runtime=CPU, autoscaling=spec))
    so = wait_for(lambda: _exists(kube, namespace, "scaledobject", "q")
                  and get(kube, namespace, "scaledobject", "q"), timeout=60,
                  what="the ScaledObject")
    trigger = so["spec"]["triggers"][0]
    assert trigger["metadata"]["threshold"] == "4"
    assert trigger["metadata"]["serverAddress"] == prom.url
    assert not _exists(kube, namespace, "hpa", "q")  # never two autoscalers on one Deployment
    st = wait_for(lambda: (status(kube, namespace, "q").get("autoscaling") or {}).get(
        "engine") == "KEDA" and status(kube, namespace, "q"), timeout=30,
        what="status.autoscaling engine KEDA")
    assert st["autoscaling"]["signal"] == "queue"

    # KEDA's controller accepts it: its HPA and the Ready condition.
    hpa = wait_for(lambda: _exists(kube, namespace, "hpa", "keda-hpa-q")
                   and get(kube, namespace, "hpa", "keda-hpa-q"), timeout=90,
                   what="KEDA's HPA keda-hpa-q")
    assert hpa["spec"]["maxReplicas"] == 3
    assert hpa["spec"]["metrics"][0]["type"] == "External"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 30
    wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in (
        get(kube, namespace, "scaledobject", "q").get("status") or {}).get("conditions") or []),
        timeout=90, what="the ScaledObject Ready")

    # KEDA reads the signal with the rendered query: at 0 the model goes to zero replicas
    # (idleSeconds 1), the operator does not put it back; a queue wakes it.
    wait_for(lambda: get(kube, namespace, "deployment", "q")["spec"].get("replicas") == 0,
             timeout=90, what="KEDA scaling the idle model to zero")
    rendered = f'sum(vllm:num_requests_waiting{{namespace="{namespace}",service="q"}})'
    assert rendered in prom.queries
    row = wait_for(lambda: next((r for r in get_md_table(kube, namespace)
                                 if r["REASON"].startswith("ScaledToZero")), None),
                   timeout=30, what="ScaledToZero in the Reason column")
    assert "0/0" in row["REPLICAS"]
    # A rollout of a model at zero starts no pods: the template changes, replicas stay 0.
    apply(kube, namespace, md("q", runtime={**CPU, "image": "ghcr.io/kubemaas/runtime:0.2.0"},
                              autoscaling=spec))
    dep = wait_for(lambda: (lambda d: d if d["spec"]["template"]["spec"]["containers"][0][
        "image"].endswith(":0.2.0") else None)(get(kube, namespace, "deployment", "q")),
        timeout=30, what="the new revision in the Deployment at zero")
    assert dep["spec"]["replicas"] == 0
    assert not json.loads(kube.kubectl("-n", namespace, "get", "pods", "-l",
                                       "app.kubernetes.io/instance=q", "-o", "json").stdout)[
        "items"]
    prom.value = 6
    wait_for(lambda: (get(kube, namespace, "deployment", "q")["spec"].get("replicas") or 0) >= 1,
             timeout=90, what="KEDA waking the model on a queue")

    # A changed target reaches the ScaledObject.
    apply(kube, namespace, md("q", runtime=CPU, autoscaling={**spec, "target": 8}))
    wait_for(lambda: get(kube, namespace, "scaledobject", "q")["spec"]["triggers"][0][
        "metadata"]["threshold"] == "8", timeout=30, what="the new target in the ScaledObject")

    # A hand-edit is undone.
    kube.kubectl("-n", namespace, "patch", "scaledobject", "q", "--type=merge",
                 "-p", '{"spec":{"maxReplicaCount":10}}')
    wait_for(lambda: get(kube, namespace, "scaledobject", "q")["spec"]["maxReplicaCount"] == 3,
             timeout=30, what="the hand-edited maxReplicaCount put back")

    # Back to the CPU signal: the ScaledObject goes, the operator's HPA comes.
    apply(kube, namespace, md("q", runtime=CPU, autoscaling={"maxReplicas": 3}))
    wait_for(lambda: not _exists(kube, namespace, "scaledobject", "q")
             and _exists(kube, namespace, "hpa", "q"), timeout=60,
             what="the ScaledObject replaced by a CPU HPA")
