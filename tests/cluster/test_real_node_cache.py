"""A ModelCache on the real node (docs/model-cache.md): the operator reads a running download
pod's progress through the API server (`pods/log`; the pod itself has no route to the API
server), takes its report from the termination message the real kubelet wrote, and a
ModelDeployment on the cache starts from the mounted directory without downloading and answers.

The download pod here runs a stand-in for the downloader (`python -m kubemaas_runtime.fetch`
is built separately): a few lines of Python in the runtime image that download the files from an
HTTP server this test starts on the node's bridge address, print the same progress lines and
write the same report. The pod is the one the operator would create (its own render, same name
and labels), created while the operator is stopped; the operator, started afterwards, adopts it
as its running download — the restart case too.

Network safety: the HTTP server listens on the bridge address (10.250.N.1), which only the
node's pods reach; the inference goes to the pod's IP on that bridge (`pod_url` refuses others).
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_operator.modelcache.api import parse_cache_spec
from kubemaas_operator.modelcache.render import CacheRef, download_pod
from kubemaas_testbed import node as real
from tests.cluster.conftest import Operator
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

PAD_BYTES = 12 * 1024 * 1024  # sent at about 2 MiB/s: several progress lines
STAND_IN = r"""
import hashlib, json, os, sys, time, urllib.request
base, dest = sys.argv[1], sys.argv[2]
names = ["model.onnx", "weights.bin"]
sizes = {}
for n in names:
    with urllib.request.urlopen(base + n, timeout=30) as r:
        sizes[n] = int(r.headers["Content-Length"])
total, done, t0, last, files = sum(sizes.values()), 0, time.monotonic(), 0.0, []
def progress(files_done):
    el = max(time.monotonic() - t0, 1e-3)
    print(json.dumps({"event": "progress", "bytesDone": done, "bytesTotal": total,
                      "filesDone": files_done, "filesTotal": len(names),
                      "rateBytesPerSecond": done / el,
                      "etaSeconds": (total - done) * el / max(done, 1)}),
          flush=True)
for n in names:
    h = hashlib.sha256()
    part = os.path.join(dest, "." + n + ".part")
    with urllib.request.urlopen(base + n, timeout=30) as r, open(part, "wb") as out:
        while chunk := r.read(65536):
            out.write(chunk); h.update(chunk); done += len(chunk)
            if time.monotonic() - last >= 0.5:
                progress(len(files)); last = time.monotonic()
    os.rename(part, os.path.join(dest, n))
    files.append({"path": n, "size": sizes[n], "sha256": h.hexdigest()})
progress(len(files))
with open("/dev/termination-log", "w") as f:
    json.dump({"phase": "Ready", "reason": "Ready", "message": "2 files verified",
               "files": files, "model": {"architecture": "affine", "weightBytes": total}}, f)
"""


class _Files(http.server.BaseHTTPRequestHandler):
    model = b""

    def do_GET(self) -> None:
        body = self.model if self.path.endswith("/model.onnx") else None
        size = len(body) if body is not None else PAD_BYTES
        if self.path.endswith("/weights.bin") or body is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if body is not None:
                self.wfile.write(body)
                return
            chunk = b"\0" * 262144
            try:
                for _ in range(size // len(chunk)):
                    self.wfile.write(chunk)
                    time.sleep(0.125)  # a throttle (about 2 MiB/s), not a synchronization
            except (BrokenPipeError, ConnectionResetError):
                pass  # the stand-in's first request only reads the size
            return
        self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serve(address: str, model: bytes) -> Iterator[str]:
    handler = type("Files", (_Files,), {"model": model})
    server = http.server.ThreadingHTTPServer((address, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{server.server_address[1]}/files/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_cache_progress_and_a_model_that_does_not_download(
        kube: Kube, namespace: str, real_node: Node, model_dir: Path,  # noqa: F811
        operator: Operator, tmp_path: Path) -> None:
    model = (model_dir / MODEL / "model.onnx").read_bytes()
    with _serve(real_node.slot.gateway, model) as base:
        _cache_and_model(kube, namespace, real_node, operator, base, tmp_path / "caches")


def _cache_and_model(kube: Kube, namespace: str, real_node: Node,  # noqa: F811
                     operator: Operator,
                     base: str, cache_root: Path) -> None:
    node = real_node.node.name
    cache = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelCache",
             "metadata": {"name": "affine-files", "namespace": namespace},
             "spec": {"source": {"uri": base + "model.onnx"},
                      "storage": {"type": "node", "node": {"path": str(cache_root),
                                                           "nodes": [node]}},
                      "download": {"image": real_node.image, "imagePullPolicy": "Never",
                                   "progressIntervalSeconds": 1}}}
    md = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
          "metadata": {"name": "affine-cached", "namespace": namespace},
          "spec": {"model": {"cache": "affine-files", "format": "onnx", "name": MODEL},
                   "runtime": {"image": real_node.image, "imagePullPolicy": "Never",
                               "resources": {"cpu": "250m", "memory": "256Mi"}},
                   "scheduling": {"nodeSelector": {real.LABEL: "true"},
                                  "tolerations": [real.TOLERATION]}, "replicas": 1}}
    try:
        operator.stop()  # the download pod below is created as the operator would
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(cache))
        uid = get_json(kube, "-n", namespace, "get", "modelcache", "affine-files")[
            "metadata"]["uid"]
        pod = download_pod(CacheRef("affine-files", namespace, uid),
                           parse_cache_spec(cache["spec"]), node, 1)
        container = pod["spec"]["containers"][0]
        container["command"] = ["python", "-c", STAND_IN, base, "/cache"]
        container["args"] = []
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
        operator.start()

        samples: list[tuple[str, int, int]] = []

        def ready() -> dict[str, Any] | None:
            st = get_json(kube, "-n", namespace, "get", "modelcache", "affine-files").get(
                "status") or {}
            samples.append((st.get("phase", ""), st.get("bytesDone", 0), st.get("bytesTotal", 0)))
            return st if st.get("phase") == "Ready" else None
        st = wait_for(ready, timeout=120, interval=0.2, what="the ModelCache Ready")
        moving = [s for s in samples if s[0] == "Downloading" and 0 < s[1] < s[2]]
        print(f"\nstatus samples while downloading (phase, bytesDone, bytesTotal): {moving}")
        assert moving, f"no progress seen in the status: {samples}"
        assert st["nodes"][0]["name"] == node and st["nodes"][0]["phase"] == "Ready"
        assert {f["path"] for f in st["files"]} == {"model.onnx", "weights.bin"}
        assert (cache_root / namespace / "affine-files" / "model.onnx").is_file()

        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(md))

        def answered() -> dict[str, Any] | None:
            pods = get_json(kube, "-n", namespace, "get", "pods", "-l",
                            "app.kubernetes.io/instance=affine-cached")["items"]
            for p in pods:
                ip = p.get("status", {}).get("podIP")
                if ip and infer(real_node.slot, ip, MODEL) == Y:
                    return dict(p)
            return None
        runtime_pod = wait_for(answered, timeout=180, interval=0.2,
                               what="the model on the cache to answer")
        assert runtime_pod["spec"]["nodeName"] == node
        log = kube.kubectl("-n", namespace, "logs", runtime_pod["metadata"]["name"]).stdout
        assert "downloading model" not in log and "/var/lib/kubemaas/model-cache/model.onnx" in log

        kube.kubectl("-n", namespace, "delete", "md", "affine-cached", "--wait=true",
                     "--timeout=90s")
        wait_for(lambda: not [p for p in get_json(kube, "-n", namespace, "get", "pods", "-l",
                                                   "app.kubernetes.io/instance=affine-cached")[
            "items"]], timeout=90, what="the model's pod gone")
        kube.kubectl("-n", namespace, "delete", "modelcache", "affine-files", "--wait=true",
                     "--timeout=120s")
        assert list((cache_root / namespace / "affine-files").iterdir()) == []
    finally:
        if not operator.alive():
            operator.start()
        kube.kubectl("-n", namespace, "delete", "md", "affine-cached", "--ignore-not-found",
                     "--wait=false", check=False)
