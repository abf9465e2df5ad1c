"""Autoscaling on an inference signal with KEDA as the engine, against the real control plane:

- without KEDA, a model that scales on its queue falls back to the CPU HorizontalPodAutoscaler
  and says so (status.autoscaling, a Warning Event);
- with KEDA's CRDs and its operator running (built from its Go module, kubemaas_testbed.keda), the
  operator renders a ScaledObject instead, a changed target reaches it, a hand-edit is undone,
  and KEDA's own controller accepts it (its HPA keda-hpa-NAME, the Ready condition) and scales
  the Deployment to zero and back on the signal it reads from Prometheus, and beyond one
  replica through its metrics API server (the HPA's External metric).

Prometheus is the real one (kubemaas_testbed.prometheus, built from its Go module): KEDA asks
its query API, and its query log shows the query the operator rendered. What it scrapes stands
in for the runtime pods, which are kwok's here and serve nothing: a small exporter on 127.0.0.1
serves the queue gauge with the value the test sets and the labels a ServiceMonitor would give
(the runtime's own gauges are exercised by tests/runtime/test_batching.py, and the whole chain
on real pods by tests/cluster/test_autoscaling_real_node.py).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kubemaas_operator.floor import FLOOR_MANAGER
from tests.cluster.conftest import ROOT, Operator, reconfigured
from tests.cluster.test_operator import apply, get, get_md_table, md, status
from tests.conftest import Kube
from tests.helpers import holds, wait_for

pytestmark = pytest.mark.cluster

QUEUE = {"signal": "queue", "target": 4, "minReplicas": 1, "maxReplicas": 3}
CPU = {"image": "ghcr.io/kubemaas/runtime:0.1.0", "resources": {"cpu": "1"}}


class Exporter:
    """`vllm:num_requests_waiting` of one model, as its pods would expose it, on 127.0.0.1:
    `value` under the labels `namespace` and `service`; `vllm:num_requests_running` too when
    `running` is set."""

    def __init__(self) -> None:
        self.value = 0.0
        self.running: float | None = None
        self.labels: dict[str, str] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = b"# TYPE vllm:num_requests_waiting gauge\n"
                if outer.labels:
                    sel = ",".join(f'{k}="{v}"' for k, v in sorted(outer.labels.items()))
                    body += f"vllm:num_requests_waiting{{{sel}}} {outer.value}\n".encode()
                    if outer.running is not None:
                        body += f"vllm:num_requests_running{{{sel}}} {outer.running}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Signal:
    exporter: Exporter
    url: str  # the real Prometheus
    state: Path


@pytest.fixture(scope="module")
def prometheus(kube: Kube) -> Iterator[Signal]:
    """The real Prometheus, scraping the exporter (built once, cached)."""
    from kubemaas_testbed import binaries
    from kubemaas_testbed import prometheus as testbed_prometheus

    if binaries.find(testbed_prometheus.BINARY) is None:
        subprocess.run(["nice", "-n", "10", str(ROOT / "hack" / "build-testbed"),
                        "--with-prometheus"], check=True)
    state = Path(kube.kubeconfig).parent
    exporter = Exporter()
    try:
        prom = testbed_prometheus.up(state, Path(kube.kubeconfig),
                                     static_targets=[exporter.address])
        try:
            yield Signal(exporter, prom.url, state)
        finally:
            testbed_prometheus.down(state)
    finally:
        exporter.close()


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
        kube: Kube, namespace: str, operator: Operator, keda: None,
        prometheus: Signal) -> None:
    prometheus.exporter.labels = {"namespace": namespace, "service": "q", "model_name": "q"}
    with reconfigured(operator, KUBEMAAS_OPERATOR_PROMETHEUS=prometheus.url):
        _scaledobject_lifecycle(kube, namespace, prometheus, operator)


def _scaledobject_lifecycle(kube: Kube, namespace: str, prom: Signal,
                            operator: Operator) -> None:
    spec = {**QUEUE, "minReplicas": 0, "idleSeconds": 1, "scaleDownStabilizationSeconds": 30}
    apply(kube, namespace, md("q", runtime=CPU, autoscaling=spec))
    so = wait_for(lambda: _exists(kube, namespace, "scaledobject", "q")
                  and get(kube, namespace, "scaledobject", "q"), timeout=60,
                  what="the ScaledObject")
    trigger = so["spec"]["triggers"][0]
    assert trigger["metadata"]["threshold"] == "4"
    assert trigger["metadata"]["serverAddress"] == prom.url
    assert not _exists(kube, namespace, "hpa", "q")  # never two autoscalers on one Deployment
    # A model KEDA may hold at zero is created at zero (no pod started only to be scaled
    # away), and the floor's field manager keeps the count when the operator's applies omit it.
    dep = get(kube, namespace, "deployment", "q")
    assert dep["spec"]["replicas"] == 0
    assert any(f["manager"] == FLOOR_MANAGER and "f:replicas" in (f.get("fieldsV1") or {}).get(
        "f:spec", {}) for f in dep["metadata"]["managedFields"])
    st = wait_for(lambda: (status(kube, namespace, "q").get("autoscaling") or {}).get(
        "engine") == "KEDA" and status(kube, namespace, "q"), timeout=30,
        what="status.autoscaling engine KEDA")
    assert st["autoscaling"]["signal"] == "queue"

    _keda_accepts(kube, namespace)
    _quiet_beside_kedas_hpa(operator)
    _idle_to_zero_and_woken_by_a_queue(kube, namespace, prom, spec)

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


def _quiet_beside_kedas_hpa(operator: Operator) -> None:
    """KEDA's HPA keda-hpa-q carries the ScaledObject's labels (ours): it was taken for the
    model's own HPA q, which the operator then deleted on every resync and watch event."""
    operator.wait_resyncs(3)
    assert "q: applied nothing; deleted HorizontalPodAutoscaler" not in operator.log_text()


def _keda_accepts(kube: Kube, namespace: str) -> None:
    """KEDA's controller accepts the ScaledObject: its HPA and the Ready condition."""
    hpa = wait_for(lambda: _exists(kube, namespace, "hpa", "keda-hpa-q")
                   and get(kube, namespace, "hpa", "keda-hpa-q"), timeout=90,
                   what="KEDA's HPA keda-hpa-q")
    assert hpa["spec"]["maxReplicas"] == 3
    assert hpa["spec"]["metrics"][0]["type"] == "External"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 30
    wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in (
        get(kube, namespace, "scaledobject", "q").get("status") or {}).get("conditions") or []),
        timeout=90, what="the ScaledObject Ready")


def _idle_to_zero_and_woken_by_a_queue(kube: Kube, namespace: str, prom: Signal,
                                       spec: dict[str, Any]) -> None:
    """KEDA reads the signal with the rendered query: at 0 the model goes to zero replicas
    (idleSeconds 1), the operator does not put it back; a queue wakes it."""
    wait_for(lambda: get(kube, namespace, "deployment", "q")["spec"].get("replicas") == 0,
             timeout=90, what="KEDA scaling the idle model to zero")
    assert _events(kube, namespace, "SuccessfulCreate") == []  # no pod was ever made
    from kubemaas_testbed import prometheus as testbed_prometheus

    rendered = f'sum(vllm:num_requests_waiting{{namespace="{namespace}",service="q"}})'
    assert rendered in testbed_prometheus.logged_queries(prom.state)
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
    # Nothing ran it yet: it is the update, judged once the model wakes (not current at zero).
    ro = wait_for(lambda: (lambda r: r if (r.get("update") or {}).get("number") == 2 else None)(
        status(kube, namespace, "q").get("rollout") or {}), timeout=30,
        what="revision 2 pending at zero")
    assert ro["current"]["number"] == 1
    time.sleep(7)  # past settleSeconds (5): still not complete, it has not run
    ro = status(kube, namespace, "q")["rollout"]
    assert (ro["current"]["number"], ro["update"]["number"]) == (1, 2)
    prom.exporter.value = 6
    wait_for(lambda: (get(kube, namespace, "deployment", "q")["spec"].get("replicas") or 0) >= 1,
             timeout=90, what="KEDA waking the model on a queue")
    # Beyond one replica it is the HPA, reading the External metric through KEDA's metrics API
    # server: 6 waiting at 4 per replica -> ceil(6 / 4) = 2.
    wait_for(lambda: get(kube, namespace, "deployment", "q")["spec"].get("replicas") == 2,
             timeout=120, what="KEDA's HPA scaling to ceil(6 / 4) = 2 replicas")
    wait_for(lambda: ((status(kube, namespace, "q").get("rollout") or {}).get("current") or {})
             .get("number") == 2, timeout=60, what="revision 2 complete once it ran")
    _not_idle_while_requests_run(kube, namespace, prom)


def _not_idle_while_requests_run(kube: Kube, namespace: str, prom: Signal) -> None:
    """No request waits, 3 run (every request already in the batch): the model is busy, not
    idle, and keeps a replica (the busy trigger); once none runs it goes to zero again."""
    prom.exporter.running = 3
    prom.exporter.value = 0
    # KEDA's scale loop (pollingInterval 15 s) with idleSeconds 1 took the model to zero within
    # about 20 s of the queue's 0 when only the queue counted: watched for 45 s.
    holds(lambda: (get(kube, namespace, "deployment", "q")["spec"].get("replicas") or 0) >= 1,
          45, "a replica while requests run", interval=1.0)
    prom.exporter.running = 0
    wait_for(lambda: get(kube, namespace, "deployment", "q")["spec"].get("replicas") == 0,
             timeout=120, what="KEDA scaling the model to zero once nothing runs")
