"""Autoscaling on the queue, for real, on the real node (docs/autoscaling.md): a runtime pod under a
bounded load scales out because its queue grows, and back in when the load stops.

Everything in the loop is the real thing: the runtime's batcher exports
`vllm:num_requests_waiting`; Prometheus (built from its Go module, kubemaas_testbed.prometheus)
scrapes the real node's runtime pods on the project's bridge; KEDA's operator reads it with the
query the operator rendered into the ScaledObject; KEDA's metrics API server, aggregated by the
testbed's API server (external.metrics.k8s.io), hands it to the HPA KEDA made, and the
controller-manager's HPA controller scales the Deployment; the kubelet starts the new pods.

The model is a tiny ONNX graph made slow on purpose (a chain of 512x512 MatMuls) under a CPU
limit, so that a handful of concurrent clients builds a queue in its single worker slot. The
load goes to the pods' addresses on the real node's bridge only (loadgen.Load refuses anything
else), is bounded in requests and seconds, and stops once the scale-out was seen.
"""

from __future__ import annotations

import calendar
import hashlib
import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_testbed import node as real
from kubemaas_testbed import prometheus as testbed_prometheus
from kubemaas_testbed.volumes import bound_host_volume
from tests.cluster.conftest import ROOT, Operator, reconfigured
from tests.cluster.explain import pods_and_node
from tests.cluster.loadgen import Load
from tests.cluster.test_autoscaling_keda import keda  # noqa: F401  (module fixture)
from tests.cluster.test_real_node import (  # noqa: F401  (module fixtures)
    Node,
    get_json,
    ready,
    real_node,
)
from tests.conftest import Kube
from tests.helpers import http_json, wait_for

pytestmark = pytest.mark.cluster

MODEL = "slow"
NAME = "queue-scaled"
WIDTH = 512
DEPTH = 48  # MatMuls per call: tens of milliseconds of CPU at batch 1
TARGET = 2  # requests waiting per replica
MAX_REPLICAS = 3
# Closed loop: one replica has ~15 waiting -> ceil(15 / 2) = 8 -> capped at 3; over three
# replicas the queue stays above the 2 x 2 that two replicas would carry, so the replicas
# stay until the load ends (with 8 clients, three replicas drained it to ~2 waiting and the
# HPA recommended 1 replica under load: only the stabilisation window kept them).
CLIENTS = 16
STABILIZATION_S = 30  # longer than the HPA controller's 15 s sync, so that it is felt
TIMINGS = ROOT / ".state" / "autoscaling-timings.jsonl"
# a sample of the scaling: seconds, the HPA's metric per replica, desired replicas, replicas
Sample = tuple[float, float | None, int, int]


@pytest.fixture(scope="module")
def prometheus(kube: Kube, real_node: Node) -> Iterator[testbed_prometheus.Prometheus]:  # noqa: F811
    """Prometheus scraping the real node's runtime pods (built once, cached)."""
    from kubemaas_testbed import binaries

    if binaries.find(testbed_prometheus.BINARY) is None:
        subprocess.run(["nice", "-n", "10", str(ROOT / "hack" / "build-testbed"),
                        "--with-prometheus"], check=True)
    state = Path(kube.kubeconfig).parent
    prom = testbed_prometheus.up(state, Path(kube.kubeconfig), real_node.node.name,
                                 real_node.slot.subnet)
    try:
        yield prom
    finally:
        testbed_prometheus.down(state)


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = 2x + 1 over [batch, 4], plus h: x through DEPTH MatMuls of WIDTH x WIDTH (identity
    weights, so the values stay put while the CPU works)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Mul", ["x", "two"], ["t"]),
             helper.make_node("Add", ["t", "one"], ["y"]),
             helper.make_node("MatMul", ["x", "widen"], ["h0"])]
    for i in range(DEPTH):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "eye"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"h{DEPTH}", "axes"], ["h"], keepdims=1))
    graph = helper.make_graph(
        nodes, MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("two", TensorProto.FLOAT, [4], [2.0] * 4),
         helper.make_tensor("one", TensorProto.FLOAT, [4], [1.0] * 4),
         numpy_helper.from_array(np.ones((4, WIDTH), np.float32) / WIDTH, "widen"),
         numpy_helper.from_array(np.eye(WIDTH, dtype=np.float32), "eye"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    root = tmp_path_factory.mktemp("slow-models")
    (root / MODEL).mkdir()
    onnx.save(model, str(root / MODEL / "model.onnx"))
    root.chmod(0o755)  # the runtime runs as uid 65532
    (root / MODEL).chmod(0o755)
    (root / MODEL / "model.onnx").chmod(0o644)
    return root


def _pods(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return list(get_json(kube, "-n", namespace, "get", "pods", "-l",
                         f"app.kubernetes.io/instance={NAME}")["items"])


def _ready_ips(kube: Kube, namespace: str, node: str) -> list[str]:
    return sorted(p["status"]["podIP"] for p in _pods(kube, namespace)
                  if p["spec"].get("nodeName") == node and ready(p)
                  and p.get("status", {}).get("podIP") and not p["metadata"].get(
                      "deletionTimestamp"))


def _stamp(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def _ready_since(pod: dict[str, Any]) -> float | None:
    for c in pod.get("status", {}).get("conditions", []):
        if c["type"] == "Ready" and c["status"] == "True":
            return _stamp(c["lastTransitionTime"])
    return None


def _hpa_metric(hpa: dict[str, Any]) -> float | None:
    """The external metric's value the HPA last read (per replica: AverageValue)."""
    for m in (hpa.get("status") or {}).get("currentMetrics") or []:
        current = (m.get("external") or {}).get("current") or {}
        value = current.get("averageValue") or current.get("value")
        if value is not None:
            return _quantity(str(value))
    return None


def _quantity(text: str) -> float:
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


def _rescale_events(kube: Kube, namespace: str) -> list[str]:
    out = get_json(kube, "-n", namespace, "get", "events", "--field-selector",
                   f"involvedObject.name=keda-hpa-{NAME},reason=SuccessfulRescale")
    return [e["message"] for e in out["items"]]


def _spec(sha: str, image: str) -> dict[str, Any]:
    return {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": NAME},
            "spec": {
                "model": {"uri": f"pvc://models/{MODEL}/model.onnx", "format": "onnx",
                          "sha256": sha, "name": MODEL},
                "runtime": {"image": image, "imagePullPolicy": "Never",
                            "resources": {"cpu": "250m", "cpuLimit": "250m",
                                          "memory": "256Mi"}},
                "scheduling": {"nodeSelector": {real.LABEL: "true"},
                               "tolerations": [real.TOLERATION]},
                "autoscaling": {"signal": "queue", "target": TARGET, "minReplicas": 1,
                                "maxReplicas": MAX_REPLICAS,
                                "scaleDownStabilizationSeconds": STABILIZATION_S}}}


def test_queue_scales_the_real_pods_out_and_back_in(
        kube: Kube, namespace: str, real_node: Node, slow_model_dir: Path,  # noqa: F811
        operator: Operator, keda: None, prometheus: testbed_prometheus.Prometheus,  # noqa: F811
) -> None:
    sha = hashlib.sha256((slow_model_dir / MODEL / "model.onnx").read_bytes()).hexdigest()
    pv = f"{namespace}-slow-models"
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
        bound_host_volume(pv, slow_model_dir, namespace, "models")))
    try:
        with reconfigured(operator, KUBEMAAS_OPERATOR_PROMETHEUS=prometheus.url):
            kube.kubectl("-n", namespace, "apply", "-f", "-",
                         input=yaml.safe_dump(_spec(sha, real_node.image)))
            _scale_out_and_in(kube, namespace, real_node, prometheus)
    finally:
        kube.kubectl("-n", namespace, "delete", "md", NAME, "--ignore-not-found",
                     "--wait=false", check=False)
        kube.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


def _scale_out_and_in(kube: Kube, namespace: str, rn: Node,
                      prom: testbed_prometheus.Prometheus) -> None:
    ip, hpa_name = _serving_and_scaling_active(kube, namespace, rn, prom)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                   "data": [1.0, 2.0, 3.0, 4.0]}]}).encode()
    status, out = http_json(f"http://{ip}:8080/v2/models/{MODEL}/infer",
                            json.loads(body), timeout=30)
    assert status == 200 and out["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]

    load = Load(rn.slot.subnet, f"/v2/models/{MODEL}/infer", body, clients=CLIENTS,
                max_requests=20000, max_seconds=300)
    scale_out = _scale_out_under_load(kube, namespace, rn, prom, load, ip, hpa_name)
    # Still at the maximum when the load stopped: the scale-in below is the load's end.
    assert get_json(kube, "-n", namespace, "get", "deployment", NAME)["spec"][
        "replicas"] == MAX_REPLICAS
    scale_in, after = _scale_in(kube, namespace, hpa_name, load)
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **_scrape_health(prom, namespace), **scale_out, **scale_in,
              "stabilization_s": STABILIZATION_S, "clients": CLIENTS,
              "requests_ok": load.ok, "requests_failed": load.errors,
              "load1": os.getloadavg()[0]}
    samples = record.pop("samples")
    print(f"\nqueue autoscaling on the real node: {record}\n(s since load start, HPA metric "
          f"per replica, desired, Ready): {samples}\n(s since load stop, HPA metric per "
          f"replica, desired, Deployment replicas): {after}")
    TIMINGS.parent.mkdir(exist_ok=True)
    with TIMINGS.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _serving_and_scaling_active(kube: Kube, namespace: str, rn: Node,
                                prom: testbed_prometheus.Prometheus) -> tuple[str, str]:
    """One replica serving, and the whole chain ready: KEDA's HPA reads its metric through the
    aggregated metrics API (ScalingActive), Prometheus scrapes the pod. Returns the replica's
    address and the HPA's name."""
    node = rn.node.name
    (ip,) = wait_for(lambda: _ready_ips(kube, namespace, node), timeout=240, interval=1,
                     what="the model's first replica Ready on the real node",
                     explain=lambda: pods_and_node(kube, namespace, rn.node))
    hpa_name = f"keda-hpa-{NAME}"
    hpa = wait_for(lambda: (lambda h: h if any(
        c["type"] == "ScalingActive" and c["status"] == "True"
        for c in (h.get("status") or {}).get("conditions") or []) else None)(
        get_json(kube, "-n", namespace, "get", "hpa", hpa_name)),
        timeout=180, interval=1, what="KEDA's HPA reading its external metric (ScalingActive)")
    assert hpa["spec"]["metrics"][0]["type"] == "External"
    assert hpa["spec"]["maxReplicas"] == MAX_REPLICAS
    _check_targets(prom, rn.slot.subnet, node, expect={ip})
    wait_for(lambda: testbed_prometheus.query(prom.url, _waiting(namespace)), timeout=60,
             interval=1, what="the queue gauge in Prometheus")
    assert int(get_json(kube, "-n", namespace, "get", "deployment", NAME)["spec"][
        "replicas"]) == 1
    return ip, hpa_name


def _waiting(namespace: str) -> str:
    return f'sum(vllm:num_requests_waiting{{namespace="{namespace}",service="{NAME}"}})'


def _scale_out_under_load(kube: Kube, namespace: str, rn: Node,
                          prom: testbed_prometheus.Prometheus, load: Load, first_ip: str,
                          hpa_name: str) -> dict[str, Any]:
    """Load on the first replica until MAX_REPLICAS are Ready, new replicas taking their share
    as they come; the load stops once the scale-out was seen. Returns its timings and samples."""
    node, waiting = rn.node.name, _waiting(namespace)
    load.set_targets([first_ip])
    started_wall = time.time()
    load.start()
    samples: list[Sample] = []
    peak_queue = 0.0
    try:
        def scaled_out() -> bool:
            nonlocal peak_queue
            ips = _ready_ips(kube, namespace, node)
            load.set_targets(ips)  # new replicas share the load as they become Ready
            h = get_json(kube, "-n", namespace, "get", "hpa", hpa_name)
            samples.append((round(time.monotonic() - load.started, 1), _hpa_metric(h),
                            int((h.get("status") or {}).get("desiredReplicas") or 0),
                            len(ips)))
            q = testbed_prometheus.query(prom.url, waiting)
            if q:
                peak_queue = max(peak_queue, float(q[0]["value"][1]))
            return len(ips) == MAX_REPLICAS
        wait_for(scaled_out, timeout=280, interval=1,
                 what=f"{MAX_REPLICAS} Ready replicas under the load")
        out_s = time.monotonic() - load.started
        assert load.running, "the load ended before the scale-out (its budget is too small)"
        pods = [p for p in _pods(kube, namespace) if p["status"].get("podIP") != first_ip]
        first_new_ready = min(t for t in map(_ready_since, pods) if t is not None)
        scaled_at = _stamp(get_json(kube, "-n", namespace, "get", "hpa", hpa_name)["status"][
            "lastScaleTime"])
        _check_targets(prom, rn.slot.subnet, node, expect=set(_ready_ips(kube, namespace, node)))
        # The queue over the three Ready replicas, as KEDA reads it: still more than two
        # replicas carry at the target (the HPA's recommendation stays at the maximum).
        spread = wait_for(lambda: (lambda q: float(q[0]["value"][1]) if q and float(
            q[0]["value"][1]) > TARGET * (MAX_REPLICAS - 1) else None)(
            testbed_prometheus.query(prom.url, waiting)), timeout=60, interval=1,
            what=f"the queue over {MAX_REPLICAS} replicas above {TARGET * (MAX_REPLICAS - 1)}")
    finally:
        load.stop()
    events = _rescale_events(kube, namespace)
    assert any(f"New size: {MAX_REPLICAS}" in e and "external metric" in e
               and "above target" in e for e in events), events
    metrics_seen = [m for _, m, _, _ in samples if m is not None]
    assert metrics_seen and max(metrics_seen) > TARGET, samples  # per replica, above target
    assert peak_queue > TARGET, peak_queue
    assert load.ok > 0
    return {"load_start_to_hpa_scale_out_s": round(scaled_at - started_wall, 1),
            "load_start_to_first_new_replica_ready_s": round(first_new_ready - started_wall, 1),
            "load_start_to_all_ready_s": round(out_s, 1),
            "peak_queue": peak_queue, "queue_over_max_replicas": spread, "samples": samples}


def _scale_in(kube: Kube, namespace: str, hpa_name: str,
              load: Load) -> tuple[dict[str, Any], list[Sample]]:
    """Back to one replica once the load has stopped, and the others' pods gone."""
    after: list[Sample] = []

    def scaled_in() -> bool:
        h = get_json(kube, "-n", namespace, "get", "hpa", hpa_name)
        replicas = int(get_json(kube, "-n", namespace, "get", "deployment", NAME)["spec"][
            "replicas"])
        after.append((round(time.monotonic() - load.stopped, 1), _hpa_metric(h),
                      int((h.get("status") or {}).get("desiredReplicas") or 0), replicas))
        return replicas == 1
    wait_for(scaled_in, timeout=STABILIZATION_S + 180, interval=1,
             what="the scale-in to one replica")
    in_s = time.monotonic() - load.stopped
    wait_for(lambda: len(_pods(kube, namespace)) == 1, timeout=120, interval=1,
             what="the removed replicas' pods gone")
    gone_s = time.monotonic() - load.stopped
    assert any("New size: 1" in e and "below target" in e
               for e in _rescale_events(kube, namespace)), _rescale_events(kube, namespace)
    return {"load_stop_to_scale_in_s": round(in_s, 1),
            "load_stop_to_pods_gone_s": round(gone_s, 1)}, after


def _scrape_health(prom: testbed_prometheus.Prometheus, namespace: str) -> dict[str, Any]:
    """How the scrapes of the busy pods went (a failed or slow scrape delays what KEDA reads)."""
    sel = f'{{service="{NAME}",namespace="{namespace}"}}'
    return {name: (lambda r: round(float(r[0]["value"][1]), 3) if r else None)(
        testbed_prometheus.query(prom.url, q)) for name, q in {
        "scrapes": f"sum(count_over_time(up{sel}[10m]))",
        "scrapes_failed": f"sum(count_over_time(up{sel}[10m])) - sum(sum_over_time(up{sel}[10m]))",
        "scrape_duration_max_s": f"max(max_over_time(scrape_duration_seconds{sel}[10m]))",
    }.items()}


def _check_targets(prom: testbed_prometheus.Prometheus, subnet: ipaddress.IPv4Network,
                   node: str, expect: set[str]) -> None:
    """Prometheus scrapes exactly the model's Ready pods on the real node, at their bridge
    addresses (network rule), and nothing else."""
    def settled() -> list[dict[str, Any]] | None:
        targets = [t for t in testbed_prometheus.active_targets(prom.url)
                   if t["labels"].get("service") == NAME]
        up = {t["labels"]["instance"].rsplit(":", 1)[0] for t in targets
              if t["health"] == "up"}
        return targets if expect <= up else None
    wait_for(settled, timeout=60, interval=1, what=f"Prometheus scraping {sorted(expect)}")
    for t in testbed_prometheus.active_targets(prom.url):
        host = t["labels"]["instance"].rsplit(":", 1)[0]
        assert ipaddress.ip_address(host) in subnet, t  # never a kwok pod, never a ClusterIP
        assert t["labels"]["node"] == node, t
        assert t["scrapeUrl"].startswith(f"http://{host}:"), t
