"""spec.model.optimize on a ModelCache on the real node (docs/model-cache.md, Optimizing in the
cache): the real downloader fills a node cache; a model with `optimize: fp16` and two replicas
makes the operator run one optimize pod on the node's copy (the runtime image's optimize step,
writing into the node's directory); then both replicas mount the cache read-only, their optimize
init container serves the cached result without optimizing (its log says so), the figures reach
the ModelDeployment's status, and both answer.

The files come from an HTTP server on the node's bridge address, which only the node's pods
reach; the inferences go to the pods' IPs on that bridge (`pod_url` refuses anything else)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_testbed import node as real
from kubemaas_testbed.model_servers import FileServer, write_index
from tests.cluster.conftest import Operator
from tests.cluster.explain import pods_and_node
from tests.cluster.test_real_node import (  # noqa: F401  (module fixtures)
    MODEL,
    Node,
    Y,
    get_json,
    infer,
    model_dir,
    real_node,
)
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster


def test_optimized_once_in_the_cache_and_served_by_every_replica(
        kube: Kube, namespace: str, real_node: Node, model_dir: Path,  # noqa: F811
        operator: Operator, tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    shutil.copy(model_dir / MODEL / "model.onnx", files / "model.onnx")
    write_index(files)
    cache_root = tmp_path / "caches"
    node = real_node.node.name
    with FileServer(files, host=real_node.slot.gateway) as server:
        cache = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelCache",
                 "metadata": {"name": "affine-opt", "namespace": namespace},
                 "spec": {"source": {"uri": f"{server.url}/index.json"},
                          "storage": {"type": "node", "node": {"path": str(cache_root),
                                                               "nodes": [node]}},
                          "download": {"image": real_node.image, "imagePullPolicy": "Never",
                                       "progressIntervalSeconds": 1}}}
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(cache))
        md = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
              "metadata": {"name": "affine-fp16", "namespace": namespace},
              "spec": {"model": {"cache": "affine-opt", "format": "onnx", "name": MODEL,
                                 "optimize": {"quantize": "fp16"}},
                       "runtime": {"image": real_node.image, "imagePullPolicy": "Never",
                                   "resources": {"cpu": "250m", "memory": "512Mi"}},
                       "scheduling": {"nodeSelector": {real.LABEL: "true"},
                                      "tolerations": [real.TOLERATION]}, "replicas": 2}}
        started = time.monotonic()
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(md))
        try:
            entry = _optimized_once_on(kube, namespace, node, cache_root, started)

            def answering() -> list[dict[str, Any]] | None:
                pods = get_json(kube, "-n", namespace, "get", "pods", "-l",
                                "app.kubernetes.io/instance=affine-fp16")["items"]
                ok = [p for p in pods if p.get("status", {}).get("podIP")
                      and infer(real_node.slot, p["status"]["podIP"], MODEL) == Y]
                return ok if len(ok) == 2 else None
            pods = wait_for(answering, timeout=240, interval=0.3, what="two replicas answering",
                            explain=lambda: pods_and_node(kube, namespace, real_node.node))
            print(f"both replicas answered {time.monotonic() - started:.1f} s after the apply")
        finally:
            _print_pod_logs(kube, namespace)
    for p in pods:
        assert p["spec"]["nodeName"] == node
        log = kube.kubectl("-n", namespace, "logs", p["metadata"]["name"], "-c",
                           "optimize").stdout + kube.kubectl(
            "-n", namespace, "logs", p["metadata"]["name"], "-c", "optimize").stderr
        assert "the model cache holds the optimized model for these options" in log, log
        assert "not optimizing" in log
    report = wait_for(lambda: get_json(kube, "-n", namespace, "get", "md", "affine-fp16").get(
        "status", {}).get("optimization"), timeout=60, what="status.optimization")
    assert report["serving"] == "optimized" and report["optimizedIn"] == "modelCache"
    assert report["sizeBytes"] == entry["report"]["sizeBytes"]
    kube.kubectl("-n", namespace, "delete", "md", "affine-fp16", "--wait=true", "--timeout=90s")
    wait_for(lambda: not get_json(kube, "-n", namespace, "get", "pods", "-l",
                                  "app.kubernetes.io/instance=affine-fp16")["items"],
             timeout=90, what="the model's pods gone")
    kube.kubectl("-n", namespace, "delete", "modelcache", "affine-opt", "--wait=true",
                 "--timeout=120s")
    assert list((cache_root / namespace / "affine-opt").iterdir()) == []


def _optimized_once_on(kube: Kube, namespace: str, node: str, cache_root: Path,
                       started: float) -> dict[str, Any]:
    """The cache's optimization entry, Ready and serving the optimized file, made by one
    optimize pod on the node, its result in the cache's directory."""
    def optimized() -> dict[str, Any] | None:
        st = get_json(kube, "-n", namespace, "get", "modelcache", "affine-opt").get(
            "status") or {}
        done = [o for o in st.get("optimizations") or []
                if o.get("phase") in ("Ready", "Failed")]
        return dict(done[0]) if done else None
    entry: dict[str, Any] = wait_for(optimized, timeout=300, interval=0.5,
                                     what="the cache's optimization Ready")
    print(f"\ncache filled and optimized {time.monotonic() - started:.1f} s after the apply "
          f"(load {os.getloadavg()[0]:.1f}): {json.dumps(entry)[:600]}")
    assert entry["phase"] == "Ready" and entry["serving"] == "optimized", entry
    assert entry["nodes"][0]["name"] == node
    opt_pods = get_json(kube, "-n", namespace, "get", "pods", "-l",
                        "serving.kubemaas.io/model-cache=affine-opt,"
                        "serving.kubemaas.io/cache-role=optimize")["items"]
    assert len(opt_pods) == 1 and opt_pods[0]["spec"]["nodeName"] == node
    key_dir = cache_root / namespace / "affine-opt" / ".kubemaas-optimized" / entry["key"]
    assert (key_dir / "result.json").is_file()
    return entry


def _print_pod_logs(kube: Kube, namespace: str) -> None:
    """The last lines of every container of every pod in the namespace (for a failure's
    report: the optimize, download and runtime containers all run on the real node)."""
    for p in get_json(kube, "-n", namespace, "get", "pods")["items"]:
        name = p["metadata"]["name"]
        spec = p["spec"]
        for c in [c["name"] for c in [*(spec.get("initContainers") or []),
                                      *spec["containers"]]]:
            out = kube.kubectl("-n", namespace, "logs", name, "-c", c, "--tail=5", check=False)
            print(f"--- {name} {c}: {out.stdout[-800:]}{out.stderr[-300:]}")
