"""spec.model.optimize on a ModelCache through the operator, on the real control plane with kwok
nodes (no container runs there, so the test runs each pod's command itself from the spec the
operator wrote, its volumes moved to local directories, and writes the pod's end into its status
as the kubelet would, like tests/cluster/test_optimize_contract.py):

- a node ModelCache on two nodes, filled by the real downloader (its pod's command, from a local
  HTTP server); three models on it: two with the same options (fp16), one whose guard is too
  tight (int8-dynamic, maxAbsError 0). They wait (CacheNotReady, then CacheOptimizing);
- one optimize pod per option set and Ready node copy — two on the first node, not three —
  runs the real optimize step into the node's directory; status.optimizations of the cache
  shows the figures per key and node (the tight one: the guard failed, the original serves);
- the models get their Deployments, only on the node that has the result; the model pod's init
  container, run from its spec on the node's directory mounted read-only, serves the cached
  result without optimizing (its log says so), and its termination message brings the figures
  to the ModelDeployment's status as without a cache; the runtime started from the written
  container spec answers with the fp16 model;
- the second node's copy becomes Ready: once more per option set, there (four optimize pods in
  all for three models on two nodes)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kubemaas_testbed.cluster import free_port
from kubemaas_testbed.model_servers import FileServer
from tests.cluster.conftest import Operator
from tests.cluster.test_keras_contract import base_env, local_env
from tests.cluster.test_modelcache import (
    cache,
    cache_pods,
    cache_status,
    shared_claim,
    started,
    terminate,
    two_nodes,
)
from tests.cluster.test_operator import apply, md, status
from tests.cluster.test_optimize_contract import assert_fp16_mlp_served
from tests.conftest import Kube
from tests.helpers import wait_for
from tests.runtime.conftest import PY
from tests.runtime.test_optimize import make_mlp_onnx
from tests.runtime.test_optimize_cache import read_only as read_only  # the fixture

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def run_container(container: dict[str, Any], local: dict[str, Path], tmp: Path,
                  args: list[str] | None = None) -> tuple[int, str, str]:
    """The container's command and args, run here with its volumes moved to local
    directories: (exit code, termination message, stderr)."""
    log = tmp / f"termination-{container['name']}-{len(list(tmp.glob('termination-*')))}"
    env = {**base_env(tmp), **local_env(container, local),
           "KUBEMAAS_TERMINATION_MESSAGE_PATH": str(log)}
    cmd = [PY, *container["command"][1:], *(args if args is not None
                                            else container.get("args", []))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, (log.read_text() if log.is_file() else ""), proc.stderr


def download(kube: Kube, namespace: str, pod: dict[str, Any], volume_dir: Path,
             tmp: Path) -> None:
    """The download pod's fetch, run here with its volume at ``volume_dir``; its end into the
    pod's status."""
    (c,) = pod["spec"]["containers"]
    mount = c["volumeMounts"][0]["mountPath"]
    args = [str(volume_dir) + a.removeprefix(mount) if a.startswith(mount) else a
            for a in c["args"]]
    args[args.index("--termination-log") + 1] = str(tmp / "fetch-termination")
    proc = subprocess.run([PY, *c["command"][1:], *args], env=base_env(tmp),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    terminate(kube, namespace, pod, 0, (tmp / "fetch-termination").read_text())


def optimize_pods(kube: Kube, namespace: str, n: int, name: str = "mlp"
                  ) -> list[dict[str, Any]]:
    return list(wait_for(lambda: (lambda p: p if len(p) == n else None)(
        cache_pods(kube, namespace, name, "optimize")), timeout=60,
        what=f"{n} optimize pods"))


def reason_of(kube: Kube, namespace: str, name: str) -> str:
    return str(status(kube, namespace, name).get("reason") or "")


def model_pod(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        pods = json.loads(kube.kubectl("-n", namespace, "get", "pods", "-l",
                                       f"app.kubernetes.io/instance={name}", "-o",
                                       "json").stdout)["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")
                and p["spec"].get("nodeName")]
        return live[0] if len(live) == 1 else None
    pod: dict[str, Any] = wait_for(found, timeout=90, what=f"one scheduled pod of {name}")
    return pod


def init_terminated(kube: Kube, namespace: str, pod: dict[str, Any], message: str) -> None:
    started(kube, namespace, pod)
    patch = {"status": {"initContainerStatuses": [{
        "name": "optimize", "image": pod["spec"]["initContainers"][0]["image"], "imageID": "",
        "ready": True, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}}]}}
    kube.kubectl("-n", namespace, "patch", "pod", pod["metadata"]["name"], "--subresource",
                 "status", "--type", "strategic", "-p", json.dumps(patch))


def test_optimized_once_per_option_set_and_node_copy(kube: Kube, namespace: str,
                                                     operator: Operator, tmp_path: Path,
                                                     read_only: Any) -> None:
    n1, n2 = two_nodes(kube)
    store = tmp_path / "store"
    store.mkdir()
    make_mlp_onnx(store / "mlp.onnx")
    nodes = {n1: tmp_path / "node-1", n2: tmp_path / "node-2"}  # each node's cache directory
    port = free_port()
    with FileServer(store) as server:
        apply(kube, namespace, cache("mlp", [n1, n2],
                                     source={"uri": f"{server.url}/mlp.onnx"}))
        runtime = {"image": "ghcr.io/kubemaas/runtime:0.1.0", "resources": {"cpu": "1",
                                                                            "memory": "1Gi"}}
        for name, optimize in (("fast-a", {"quantize": "fp16"}), ("fast-b", {"quantize": "fp16"}),
                               ("strict", {"quantize": "int8-dynamic", "maxAbsError": 0})):
            apply(kube, namespace, md(name, model={"cache": "mlp", "format": "onnx",
                                                   "name": "mlp", "optimize": optimize},
                                      runtime=runtime, serving={"port": port}))
        wait_for(lambda: reason_of(kube, namespace, "fast-a").startswith("CacheNotReady"),
                 timeout=60, what="fast-a waiting: CacheNotReady")
        fetches = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(
            cache_pods(kube, namespace, "mlp")), timeout=60, what="two download pods")
        by_node = {p["spec"]["nodeName"]: p for p in fetches}
        download(kube, namespace, by_node[n1], nodes[n1], tmp_path)
        _optimize_on(kube, namespace, n1, nodes[n1], tmp_path)

    fast, strict = _option_sets_reported(kube, namespace, n1)
    # the models run on n1 only; their pods read the cache's result and do not optimize
    ro = read_only(nodes[n1])
    for name, serving in (("fast-a", "optimized"), ("strict", "original")):
        cached = fast if name == "fast-a" else strict
        _served_from_the_cache(kube, namespace, name, serving, cached, n1, ro, store, port,
                               tmp_path)

    # n2's copy becomes Ready: once more per option set, on n2 (4 pods for 3 models, 2 nodes)
    with FileServer(store) as server:
        pod = by_node[n2]
        (c,) = pod["spec"]["containers"]
        c["args"][c["args"].index("--source") + 1] = f"{server.url}/mlp.onnx"
        download(kube, namespace, pod, nodes[n2], tmp_path)
    pods = optimize_pods(kube, namespace, 4)
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted([n1, n1, n2, n2])


def _optimize_on(kube: Kube, namespace: str, node: str, node_cache: Path,
                 tmp_path: Path) -> None:
    """The node's copy is Ready: one optimize pod per option set there (two, for three
    models), each run for real against the node's cache directory; no model's Deployment
    before them."""
    pods = optimize_pods(kube, namespace, 2)
    assert {p["spec"]["nodeName"] for p in pods} == {node}
    wait_for(lambda: reason_of(kube, namespace, "fast-a").startswith("CacheOptimizing"),
             timeout=60, what="fast-a waiting: CacheOptimizing")
    assert kube.kubectl("-n", namespace, "get", "deployment", "fast-a",
                        check=False).returncode != 0
    for p in pods:
        (c,) = p["spec"]["containers"]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["KUBEMAAS_OPTIMIZE_PUBLISH"] == "1"
        code, message, err = run_container(c, {"cache": node_cache}, tmp_path)
        assert code == 0, err[-2000:]
        terminate(kube, namespace, p, 0, message)


def _option_sets_reported(kube: Kube, namespace: str,
                          node: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cache's status and Events for both option sets: fp16 optimized, the strict int8
    one rejected. Returns (the fp16 set's entry, the strict set's)."""
    st = wait_for(lambda: (lambda s: s if [o for o in s.get("optimizations") or []
                                           if o.get("phase") == "Ready"][1:] else None)(
        cache_status(kube, namespace, "mlp")), timeout=60, what="both option sets Ready")
    by_models = {tuple(o["models"]): o for o in st["optimizations"]}
    fast, strict = by_models[("fast-a", "fast-b")], by_models[("strict",)]
    assert (fast["reason"], fast["serving"]) == ("Optimized", "optimized")
    assert fast["report"]["sizeBytes"]["optimized"] < fast["report"]["sizeBytes"]["original"]
    assert fast["options"]["quantize"] == "fp16"
    assert fast["nodes"][0]["name"] == node and fast["nodes"][0]["phase"] == "Ready"
    assert (strict["reason"], strict["serving"]) == ("OptimizationRejected", "original")
    assert strict["report"]["errors"]["scores"]["maxAbsError"] > 0
    described = kube.kubectl("-n", namespace, "describe", "mc", "mlp").stdout
    assert "Optimizations:" in described and "Size Bytes" in described

    def cache_events() -> dict[str, dict[str, Any]] | None:
        items = json.loads(kube.kubectl(
            "-n", namespace, "get", "events", "--field-selector",
            "involvedObject.name=mlp,involvedObject.kind=ModelCache", "-o", "json").stdout)["items"]
        said = {e["reason"]: e for e in items}
        return said if {"Optimized", "OptimizationRejected"} <= set(said) else None
    said = wait_for(cache_events, timeout=30, what="the cache's Optimized and Warning Events")
    assert said["OptimizationRejected"]["type"] == "Warning"
    assert "models strict" in said["OptimizationRejected"]["message"]
    return fast, strict


def _served_from_the_cache(kube: Kube, namespace: str, name: str, serving: str,
                           cached: dict[str, Any], node: str, ro: Path, store: Path,
                           port: int, tmp_path: Path) -> None:
    """The model's pod runs on ``node``; its init container finds the cache's result for its
    options and does not optimize; status.optimization repeats the cache's report; the fp16
    model answers from the optimized file."""
    pod = model_pod(kube, namespace, name)
    assert pod["spec"]["nodeName"] == node
    (init,) = pod["spec"]["initContainers"]
    local = {"model-files": ro, "model-cache": tmp_path / f"{name}-emptydir"}
    local["model-cache"].mkdir()
    code, message, err = run_container(init, local, tmp_path)
    assert code == 0, err[-2000:]
    assert "the model cache holds the optimized model for these options" in err, err
    assert "not optimizing" in err
    assert not (local["model-cache"] / "optimized" / "by-key").exists()
    init_terminated(kube, namespace, pod, message)
    report = wait_for(lambda: status(kube, namespace, name).get("optimization"),
                      timeout=60, what=f"status.optimization of {name}")
    assert report["serving"] == serving and report["optimizedIn"] == "modelCache"
    assert report["pod"] == pod["metadata"]["name"]
    assert report["errors"] == cached["report"]["errors"]
    assert report["sizeBytes"] == cached["report"]["sizeBytes"]
    if serving != "optimized":
        return
    (container,) = pod["spec"]["containers"]
    env = {**base_env(tmp_path), **local_env(container, local)}
    assert_fp16_mlp_served(container, env, store / "mlp.onnx", port, tmp_path)


def test_a_claim_is_optimized_once_per_option_set(kube: Kube, namespace: str,
                                                   operator: Operator, tmp_path: Path) -> None:
    """pvc storage: one optimize pod per option set, whatever the replicas; a model with other
    options adds its own (several keys, each once); a key no model asks for any more goes."""
    pv = shared_claim(kube, namespace, f"{namespace}-opt")
    claim = tmp_path / "claim"  # the claim's root, as the pods mount it
    store = tmp_path / "store"
    store.mkdir()
    make_mlp_onnx(store / "mlp.onnx")
    runtime = {"image": "ghcr.io/kubemaas/runtime:0.1.0"}
    try:
        with FileServer(store) as server:
            apply(kube, namespace, cache("files", [], source={"uri": f"{server.url}/mlp.onnx"},
                                         storage={"type": "pvc", "pvc": {
                                             "claimName": "shared", "subPath": "models/files"}}))
            for name in ("a", "b"):
                apply(kube, namespace, md(name, model={"cache": "files", "format": "onnx",
                                                       "optimize": {"quantize": "fp16"}},
                                          runtime=runtime, replicas=2))
            (fetch,) = wait_for(lambda: cache_pods(kube, namespace, "files") or None,
                                timeout=60, what="one download pod")
            download(kube, namespace, fetch, claim, tmp_path)
        (pod,) = optimize_pods(kube, namespace, 1, "files")
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True  # restricted, as pvc's
        assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "shared"}
        (c,) = pod["spec"]["containers"]
        code, message, err = run_container(c, {"cache": claim}, tmp_path)
        assert code == 0, err[-2000:]
        terminate(kube, namespace, pod, 0, message)
        assert (claim / "models" / "files" / ".kubemaas-optimized").is_dir()
        for name in ("a", "b"):
            dep = wait_for(lambda n=name: (lambda r: json.loads(r.stdout) if r.returncode == 0
                                           else None)(kube.kubectl(
                "-n", namespace, "get", "deployment", n, "-o", "json", check=False)),
                timeout=60, what=f"{name}'s Deployment")
            (init,) = dep["spec"]["template"]["spec"]["initContainers"]
            env = {e["name"]: e["value"] for e in init["env"]}
            assert env["KUBEMAAS_OPTIMIZE_FROM_CACHE"].startswith(
                "/var/lib/kubemaas/model-cache/.kubemaas-optimized/")
            mount = next(m for m in init["volumeMounts"] if m["name"] == "model-files")
            assert mount["readOnly"] is True and mount["subPath"] == "models/files"
        st = cache_status(kube, namespace, "files")
        (entry,) = st["optimizations"]
        assert entry["models"] == ["a", "b"] and entry["phase"] == "Ready" and "nodes" not in entry
        # other options: a second key, optimized once too; then no model asks for it: it goes
        apply(kube, namespace, md("c", model={"cache": "files", "format": "onnx",
                                              "optimize": {"quantize": "int8-dynamic"}},
                                  runtime=runtime))
        pods = optimize_pods(kube, namespace, 2, "files")
        wait_for(lambda: reason_of(kube, namespace, "c").startswith("CacheOptimizing"),
                 timeout=60, what="c waiting: CacheOptimizing")
        kube.kubectl("-n", namespace, "delete", "md", "c", "--wait=false")
        assert optimize_pods(kube, namespace, 1, "files")[0]["metadata"]["name"] == (
            pod["metadata"]["name"])
        wait_for(lambda: len(cache_status(kube, namespace, "files").get("optimizations") or [])
                 == 1, timeout=60, what="c's option set gone from the status")
        assert len(pods) == 2
    finally:
        kube.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


def test_a_cache_made_by_autocache_optimizes_for_its_model(kube: Kube, namespace: str,
                                                           operator: Operator,
                                                           tmp_path: Path) -> None:
    """A model that asks for its cache (autoCache) and for optimize: the cache the operator made
    for it optimizes for it (its option set is found through the autoCache match, not a name),
    and the model then runs on the optimized copy."""
    from tests.cluster.test_implicit_cache import asking, implicit_caches

    n1, _ = two_nodes(kube)
    store = tmp_path / "store"
    store.mkdir()
    make_mlp_onnx(store / "mlp.onnx")
    node_dir = tmp_path / "node-1"
    with FileServer(store) as server:
        apply(kube, namespace, asking("auto", n1, uri=f"{server.url}/mlp.onnx",
                                      optimize={"quantize": "fp16"}))
        (mc,) = wait_for(lambda: implicit_caches(kube, namespace) or None, timeout=60,
                         what="the ModelCache autoCache creates")
        name = mc["metadata"]["name"]
        (fetch,) = wait_for(lambda: cache_pods(kube, namespace, name) or None, timeout=60,
                            what="the download pod")
        download(kube, namespace, fetch, node_dir, tmp_path)
    (pod,) = optimize_pods(kube, namespace, 1, name)
    assert pod["spec"]["nodeName"] == n1
    wait_for(lambda: reason_of(kube, namespace, "auto").startswith("CacheOptimizing"),
             timeout=60, what="the model waiting: CacheOptimizing")
    (c,) = pod["spec"]["containers"]
    code, message, err = run_container(c, {"cache": node_dir}, tmp_path)
    assert code == 0, err[-2000:]
    terminate(kube, namespace, pod, 0, message)
    st = wait_for(lambda: (lambda o: o if o and o[0].get("phase") == "Ready" else None)(
        cache_status(kube, namespace, name).get("optimizations")), timeout=60,
        what="the option set Ready")
    assert st[0]["models"] == ["auto"] and st[0]["reason"] == "Optimized"
    model = model_pod(kube, namespace, "auto")
    assert model["spec"]["nodeName"] == n1
    env = {e["name"]: e.get("value") for e in model["spec"]["initContainers"][0]["env"]}
    assert "KUBEMAAS_OPTIMIZE_FROM_CACHE" in env
