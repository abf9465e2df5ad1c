"""A model at zero replicas wakes on its first request, for real (docs/autoscaling.md, "Waking on
the first request"): a runtime ModelDeployment with `minReplicas: 0` on the real node sits at zero
(ScaledToZero); one inference request sent to KEDA's HTTP interceptor on 127.0.0.1 is held, KEDA
starts the pod on the real node (the add-on's scaler told it the route has a request in flight),
and the same request is answered with the right result. Left idle for idleSeconds, KEDA takes it
back to zero, and the next request wakes it again. Each wait (request sent -> answer) is printed
and appended to .state/real-node-timings.jsonl.

Network safety: the test sends three requests, all to the interceptor on 127.0.0.1. The
interceptor runs with direct-to-pod routing: it forwards to a ready pod IP:port from the model
Service's EndpointSlices, never to the ClusterIP, and the name it would otherwise dial
(NAME.NAMESPACE) does not resolve on this machine (checked below). The model's pods run only on
the real node (nodeSelector), so every address behind the Service is on the real node's bridge
(checked below).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_testbed import keda_http
from kubemaas_testbed import node as real
from kubemaas_testbed.volumes import bound_host_volume
from tests.cluster.conftest import Operator, reconfigured
from tests.cluster.explain import pods_and_node
from tests.cluster.real_node_timings import TIMINGS, timeline
from tests.cluster.test_autoscaling_keda import Signal
from tests.cluster.test_autoscaling_keda import keda as keda  # the module fixture
from tests.cluster.test_real_node import (  # noqa: F401  (module fixtures)
    MODEL,
    Node,
    X,
    Y,
    get_json,
    model_dir,
    real_node,
)
from tests.cluster.test_wake_on_request import (  # noqa: F401  (module fixtures)
    addon_env,
    http_addon,
    prometheus,
)
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

NAME = "affine"


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 8080)
    except OSError:
        return False
    return True


def _slice_addresses(kube: Kube, namespace: str) -> list[str]:
    slices = get_json(kube, "-n", namespace, "get", "endpointslices", "-l",
                      f"kubernetes.io/service-name={NAME}")["items"]
    return [a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]]


def _infer_through_interceptor(ports: keda_http.Ports, namespace: str,
                               timeout: float) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                   "data": X}]}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{ports.proxy}/v2/models/{MODEL}/infer", data=body, method="POST",
        headers={"Content-Type": "application/json", "Host": f"{NAME}.{namespace}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), _lower(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, {"error": err.read().decode(errors="replace")}, _lower(err.headers)


def _lower(headers: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}


def test_first_request_wakes_the_model_on_the_real_node_and_is_answered(
        kube: Kube, namespace: str, real_node: Node, model_dir: Path,  # noqa: F811
        operator: Operator, prometheus: Signal,  # noqa: F811
        http_addon: keda_http.Ports) -> None:  # noqa: F811
    sha = hashlib.sha256((model_dir / MODEL / "model.onnx").read_bytes()).hexdigest()
    pv = f"{namespace}-models"
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
        bound_host_volume(pv, model_dir, namespace, "models")))
    md = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
          "metadata": {"name": NAME, "namespace": namespace},
          "spec": {
              "model": {"uri": f"pvc://models/{MODEL}/model.onnx", "format": "onnx",
                        "sha256": sha, "name": MODEL},
              "runtime": {"image": real_node.image, "imagePullPolicy": "Never",
                          "resources": {"cpu": "250m", "memory": "256Mi"}},
              "scheduling": {"nodeSelector": {real.LABEL: "true"},
                             "tolerations": [real.TOLERATION]},
              "autoscaling": {"signal": "queue", "target": 1, "minReplicas": 0,
                              "maxReplicas": 1, "idleSeconds": 10}}}
    try:
        with reconfigured(operator, **addon_env(prometheus, http_addon)):
            kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(md))
            _at_zero(kube, namespace, http_addon)
            _wake(kube, namespace, real_node, http_addon, "at zero since its creation")
            # A second request finds the model awake: no cold start.
            code, out, headers = _infer_through_interceptor(http_addon, namespace, 60)
            assert code == 200 and list(out["outputs"][0]["data"]) == Y
            assert headers.get("x-keda-http-cold-start") == "false", headers
            wait_for(lambda: (get_json(kube, "-n", namespace, "get", "md", NAME)
                              .get("status") or {}).get("phase") == "Ready",
                     timeout=120, what="the woken ModelDeployment to be Ready",
                     explain=lambda: pods_and_node(kube, namespace, real_node.node))
            # Idle for idleSeconds: KEDA takes it back to zero, and the next request wakes it.
            _at_zero(kube, namespace, http_addon)
            _wake(kube, namespace, real_node, http_addon, "back at zero after idleSeconds")
    finally:
        kube.kubectl("-n", namespace, "delete", "md", NAME, "--ignore-not-found",
                     "--wait=false", check=False)
        kube.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


def _wake(kube: Kube, namespace: str, node: Node, ports: keda_http.Ports, when: str) -> float:
    """One request to the interceptor wakes the model at zero and is answered correctly, by a
    pod on the real node; the wait is printed and recorded."""
    # The name the interceptor dials without direct-to-pod routing leads nowhere here.
    assert not _resolves(f"{NAME}.{namespace}"), (
        f"{NAME}.{namespace} resolves on this machine: the interceptor could reach an "
        "address other than a pod on the real node's bridge")
    load = os.getloadavg()
    sent_at = time.time()
    sent = time.monotonic()
    code, out, headers = _infer_through_interceptor(ports, namespace, 300)
    waited = time.monotonic() - sent
    print(f"\nwake on request ({when}): request sent to the interceptor -> answer {code}: "
          f"{waited:.2f} s (load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})")
    assert code == 200, f"the held request was not answered: {code} {out}"
    assert list(out["outputs"][0]["data"]) == Y
    # the interceptor says it held the request for a cold start
    assert headers.get("x-keda-http-cold-start") == "true", headers
    addresses = _slice_addresses(kube, namespace)
    assert addresses and all(
        ipaddress.ip_address(a) in node.slot.subnet for a in addresses), (
        f"the Service's endpoints {addresses} are not all on the real node's bridge "
        f"{node.slot.subnet}")
    pods = [p for p in get_json(kube, "-n", namespace, "get", "pods", "-l",
                                f"app.kubernetes.io/instance={NAME}")["items"]
            if not p["metadata"].get("deletionTimestamp")]
    assert {p["spec"].get("nodeName") for p in pods} == {node.node.name}
    steps = timeline(kube, namespace, pods[0], sent_at)
    print(f"  seconds after the request was sent, to 1 s: {steps}")
    TIMINGS.parent.mkdir(exist_ok=True)
    with TIMINGS.open("a") as f:
        f.write(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "wake_on_request_s": round(waited, 2), "at": when, "steps": steps,
                            "load1": load[0]}) + "\n")
    return waited


def _at_zero(kube: Kube, namespace: str, ports: keda_http.Ports) -> None:
    """The model idles at zero with its route and trigger in place, KEDA's ScaledObject Ready and
    the interceptor knowing the route: no pod, ScaledToZero, wake on request available."""
    def md_status() -> dict[str, Any]:
        return dict(get_json(kube, "-n", namespace, "get", "md", NAME).get("status") or {})

    wait_for(lambda: ((md_status().get("autoscaling") or {}).get("wakeOnRequest") or {}).get(
        "available"), timeout=90, what="wakeOnRequest available")
    wait_for(lambda: any(c["reason"] == "ScaledToZero" for c in md_status().get(
        "conditions") or []), timeout=240, what="ScaledToZero")
    wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in (
        get_json(kube, "-n", namespace, "get", "scaledobject", NAME).get("status") or {}).get(
            "conditions") or []), timeout=120, what="KEDA's Ready on the ScaledObject")
    wait_for(lambda: f"{namespace}/{NAME}" in keda_http.pending(ports), timeout=60,
             what="the interceptor to learn the route")
    wait_for(lambda: get_json(kube, "-n", namespace, "get", "deployment", NAME)["spec"].get(
        "replicas") == 0, timeout=180, what="the Deployment at 0 replicas")
    # A new Deployment is created without replicas (the API's default is 1) and set to the floor
    # (0) right after: a pod the ReplicaSet made in between is on its way out.
    wait_for(lambda: not get_json(kube, "-n", namespace, "get", "pods", "-l",
                                  f"app.kubernetes.io/instance={NAME}")["items"],
             timeout=120, what="no pod of the model at zero")
