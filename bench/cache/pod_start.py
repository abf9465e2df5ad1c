"""Pod start with and without the model cache, on the real node (real kubelet and containerd):
`kubectl apply` of a ModelDeployment -> its first correct answer, and `kubectl scale` to 2 -> the
second replica's first answer, for a model of a few hundred MB

  download  the pod downloads the model itself (spec.model.uri, http:// from a server this script
            starts on the node's bridge address, sha256 pinned), every replica again;
  cache     the pod mounts a node ModelCache that is already Ready (spec.model.cache);
  autoCache the model asks for a cache (spec.model.autoCache) that does not exist yet: the
            operator creates it, it is filled, then the pod starts (first replica only; the
            cache goes with the model between repeats, files included).

    .venv/bin/python bench/cache/bench_cache.py --pod-start [--pad-mib 256] [--repeat 3]
        [--rate-mib 0] [--no-docs]

The model is y = 2x + 1 (ONNX) with an unused initializer of --pad-mib MiB, so that the file is
that large and onnxruntime parses all of it. The server sends at full speed (loopback on this
machine) unless --rate-mib paces each response. A private testbed and the real node are started
and stopped here (root, hack/install-node-deps; docs/real-node.md); traffic goes only to the
node's bridge (the pods' IPs, through `pod_url`) and to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
NS = "bench-cache"
MODEL = "affine"
TIMEOUT = 300.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def write_model(path: Path, pad_mib: int) -> str:
    """y = 2x + 1 over [batch, 4] with an unused `pad` initializer; its sha256."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    pad = numpy_helper.from_array(
        np.random.default_rng(0).random(pad_mib * (1 << 18), dtype=np.float32), "pad")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"],
                                                                         ["y"])],
        MODEL, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [4], [2.0] * 4),
         helper.make_tensor("one", TensorProto.FLOAT, [4], [1.0] * 4), pad])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))
    path.chmod(0o644)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wait(check: Callable[[], Any], what: str, timeout: float = TIMEOUT,
         interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def testbed(workdir: Path) -> Iterator[tuple[Any, Any, Any, str]]:
    """(kube, operator, node slot, runtime image): a private control plane, the operator
    under its ServiceAccount, the real node; all stopped afterwards."""
    from tests.cluster.conftest import Operator, install
    from tests.conftest import Kube

    from kubemaas_testbed import node as real
    from kubemaas_testbed.cluster import Cluster

    cluster = Cluster(workdir / "testbed")
    cluster.up(log=lambda m: log(f"[testbed] {m}"))
    kube = Kube(cluster.kubeconfig)
    node = op = None
    try:
        install(kube)
        op = Operator(kube=kube, workdir=workdir, log=workdir / "operator.log")
        op.start()
        node = real.RealNode(cluster.state)
        server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"][
            "server"]
        manifest = node.up(server, log=lambda m: log(f"[real node] {m}"))
        kube.kubectl("create", "namespace", NS)
        wait(lambda: kube.kubectl("-n", NS, "get", "serviceaccount", "default",
                                  check=False).returncode == 0, "the default ServiceAccount")
        yield kube, op, node, manifest["images"]["runtime"]["ref"]
    finally:
        if node is not None:
            node.down(delete_node_object=True)
        if op is not None:
            op.stop()
        cluster.processes.stop_all(["kwok", "kube-scheduler", "kube-controller-manager",
                                    "kube-apiserver", "etcd"])


class Bench:
    def __init__(self, kube: Any, node: Any, image: str, url: str, sha: str,
                 cache_root: Path) -> None:
        from kubemaas_testbed import node as real

        self.kube, self.node, self.image, self.url, self.sha = kube, node, image, url, sha
        self.cache_root = cache_root
        self.storage = {"type": "node", "node": {"path": str(cache_root),
                                                 "nodes": [node.name]}}
        self.download = {"image": image, "imagePullPolicy": "Never",
                         "progressIntervalSeconds": 1}
        self.placement = {"nodeSelector": {real.LABEL: "true"},
                          "tolerations": [real.TOLERATION]}

    def get(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.kube.kubectl("-n", NS, "get", *args, "-o", "json").stdout))

    def model(self, name: str, model: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"model": {**model, "format": "onnx", "name": MODEL},
                         "runtime": {"image": self.image, "imagePullPolicy": "Never",
                                     "resources": {"cpu": "500m", "memory": "1Gi"}},
                         "scheduling": self.placement, "replicas": 1}}

    def answering(self, name: str, other_than: str = "") -> dict[str, Any] | None:
        from tests.cluster.test_real_node import Y, infer

        for p in self.get("pods", "-l", f"app.kubernetes.io/instance={name}")["items"]:
            ip = p.get("status", {}).get("podIP")
            if (p["metadata"]["name"] != other_than and ip
                    and infer(self.node.slot, ip, MODEL) == Y):
                return dict(p)
        return None

    def fill_cache(self, name: str) -> float:
        body = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelCache",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"source": {"uri": self.url}, "storage": self.storage,
                         "download": self.download}}
        t0 = time.monotonic()
        self.kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(body))
        st = wait(lambda: (lambda s: s if s.get("phase") in ("Ready", "Failed") else None)(
            self.get("modelcache", name).get("status") or {}), f"ModelCache {name} Ready",
            interval=0.3)
        if st["phase"] != "Ready":
            raise RuntimeError(f"ModelCache {name}: {st}")
        return time.monotonic() - t0

    def start(self, name: str, model: dict[str, Any], second: bool) -> tuple[float, float | None]:
        """apply -> first answer; with `second`, scale 2 -> the other replica's first answer."""
        t0 = time.monotonic()
        self.kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(self.model(name, model)))
        first = wait(lambda: self.answering(name), f"{name} answering")
        first_s = time.monotonic() - t0
        if not second:
            return first_s, None
        t1 = time.monotonic()
        self.kube.kubectl("-n", NS, "scale", "md", name, "--replicas=2")
        wait(lambda: self.answering(name, other_than=first["metadata"]["name"]),
             f"{name}'s second replica answering")
        return first_s, time.monotonic() - t1

    def remove(self, name: str, cache: str | None = None) -> None:
        self.kube.kubectl("-n", NS, "delete", "md", name, "--wait=true", "--timeout=120s")
        wait(lambda: not self.get("pods", "-l", f"app.kubernetes.io/instance={name}")["items"],
             f"{name}'s pods gone")
        if cache is not None:  # the implicit cache: the garbage collector, then its clean-up
            wait(lambda: self.kube.kubectl("-n", NS, "get", "modelcache", cache,
                                           check=False).returncode != 0,
                 f"ModelCache {cache} collected")


def measure(pad_mib: int, repeat: int, rate_mib: float) -> dict[str, Any]:
    from kubemaas_testbed.model_servers import FileServer

    workdir = Path(tempfile.mkdtemp(prefix="kubemaas-bench-podstart-"))
    files = workdir / "files"
    files.mkdir()
    workdir.chmod(0o755)
    files.chmod(0o755)
    sha = write_model(files / "model.onnx", pad_mib)
    size = (files / "model.onnx").stat().st_size
    log(f"model: {size} bytes, sha256 {sha[:12]}…; load: {uptime()}")
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"bytes": size, "repeat": repeat, "rateMiB": rate_mib,
                           "uptimeBefore": uptime(), "rows": rows}
    with testbed(workdir) as (kube, _op, node, image), \
            FileServer(files, host=node.slot.gateway) as server:
        if rate_mib > 0:
            server.rate = int(rate_mib * (1 << 20))
        url = f"{server.url}/model.onnx"
        bench = Bench(kube, node, image, url, sha, workdir / "caches")
        out["cacheFillSeconds"] = bench.fill_cache("weights")
        log(f"ModelCache weights Ready in {out['cacheFillSeconds']:.1f} s")
        # Another directory: with the same storage as `weights` the model would use that cache
        # (a matching ModelCache someone created is reused), which is not this case.
        auto_storage = {"type": "node", "node": {"path": str(workdir / "auto-caches"),
                                                 "nodes": [node.name]}}
        auto = {"uri": url, "autoCache": {"storage": auto_storage,
                                          "download": bench.download}}
        for r in range(1, repeat + 1):
            for mode, model in (("download", {"uri": url, "sha256": sha}),
                                ("cache", {"cache": "weights"}), ("autoCache", auto)):
                name = f"{mode.lower()}-{r}"
                first, second = bench.start(name, model, second=mode != "autoCache")
                cache = None
                if mode == "autoCache":  # the one the operator created for it
                    cache = next(c["metadata"]["name"] for c in bench.get(
                        "modelcaches", "-l", "serving.kubemaas.io/implicit-cache=true")[
                        "items"])
                rows.append({"mode": mode, "repeat": r, "first": first, "second": second,
                             "load1": os.getloadavg()[0]})
                log(f"{mode} #{r}: first replica {first:.1f} s"
                    + (f", second {second:.1f} s" if second is not None else "")
                    + f" (load {os.getloadavg()[0]:.1f})")
                bench.remove(name, cache)
    out["uptimeAfter"] = uptime()
    return out


def summary(result: dict[str, Any]) -> list[tuple[str, str, int, float, float, float]]:
    """(mode, replica, n, median, min, max) per mode and replica."""
    table = []
    for mode in ("download", "cache", "autoCache"):
        for replica in ("first", "second"):
            values = [r[replica] for r in result["rows"]
                      if r["mode"] == mode and r[replica] is not None]
            if values:
                table.append((mode, replica, len(values), statistics.median(values),
                              min(values), max(values)))
    return table


def table_text(result: dict[str, Any]) -> str:
    lines = ["| mode | replica | n | median s | min s | max s |", "|---|---|---|---|---|---|"]
    for mode, replica, n, med, lo, hi in summary(result):
        lines.append(f"| {mode} | {replica} | {n} | {med:.1f} | {lo:.1f} | {hi:.1f} |")
    return "\n".join(lines)
