"""A ModelCache on the real node (docs/model-cache.md), with the real downloader: the operator
creates the download pod (`python -m kubemaas_runtime.fetch` in the runtime image), reads its
progress lines through the API server (`pods/log`: the pod has no route to the API server) into
the status while it runs, takes the report from the termination message the kubelet wrote, and
a ModelDeployment on the cache starts from the mounted directory without downloading and
answers. Deleting the ModelCache runs a real clean-up pod that empties the node's directory.

The files come from an HTTP server (a folder with index.json, rate-limited so that the download
lasts several progress intervals) that this test starts on the node's bridge address, which only
the node's pods reach; the inference goes to the pod's IP on that bridge (`pod_url` refuses
anything else).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_testbed import node as real
from kubemaas_testbed.model_servers import FileServer, write_index
from kubemaas_testbed.volumes import bound_host_volume
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

PAD_BYTES = 256 * 1024 * 1024  # weights beside the model, sent at RATE: several progress lines
RATE = 32 * 1024 * 1024


def test_cache_from_http_with_progress_and_a_model_that_does_not_download(
        kube: Kube, namespace: str, real_node: Node, model_dir: Path,  # noqa: F811
        operator: Operator, tmp_path: Path) -> None:
    files = _model_files(tmp_path, model_dir, PAD_BYTES)
    cache_root = tmp_path / "caches"
    node = real_node.node.name
    with FileServer(files, host=real_node.slot.gateway) as server:
        server.rate = RATE
        cache = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelCache",
                 "metadata": {"name": "affine-files", "namespace": namespace},
                 "spec": {"source": {"uri": f"{server.url}/index.json"},
                          "storage": {"type": "node", "node": {"path": str(cache_root),
                                                               "nodes": [node]}},
                          "download": {"image": real_node.image, "imagePullPolicy": "Never",
                                       "progressIntervalSeconds": 1}}}
        started = time.monotonic()
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(cache))
        samples: list[tuple[float, str, int, int]] = []

        def ready() -> dict[str, Any] | None:
            st = get_json(kube, "-n", namespace, "get", "modelcache", "affine-files").get(
                "status") or {}
            samples.append((round(time.monotonic() - started, 1), st.get("phase", ""),
                            st.get("bytesDone", 0), st.get("bytesTotal", 0)))
            return st if st.get("phase") in ("Ready", "Failed") else None
        st = wait_for(ready, timeout=240, interval=0.3, what="the ModelCache Ready",
                      explain=lambda: pods_and_node(kube, namespace, real_node.node))
    filled_s = time.monotonic() - started
    moving = [s for s in samples if s[1] == "Downloading" and 0 < s[2] < s[3]]
    print(f"\nModelCache filled in {filled_s:.1f} s (load {os.getloadavg()[0]:.1f}); status "
          f"while downloading (s, phase, bytesDone, bytesTotal): {moving}")
    assert st["phase"] == "Ready", st
    assert moving, f"no progress seen in the status: {samples}"
    assert st["nodes"][0]["name"] == node and st["nodes"][0]["phase"] == "Ready"
    assert {f["path"] for f in st["files"]} >= {"model.onnx", "weights.bin"}
    assert (cache_root / namespace / "affine-files" / "model.onnx").is_file()

    try:
        _served_from_the_cache(kube, namespace, real_node, files, filled_s)
        _delete_model_then_cache(kube, namespace, "affine-cached", "affine-files",
                                 cache_root / namespace / "affine-files")
    finally:
        kube.kubectl("-n", namespace, "delete", "md", "affine-cached", "--ignore-not-found",
                     "--wait=false", check=False)


def _served_from_the_cache(kube: Kube, namespace: str, rn: Node, files: Path,
                           filled_s: float) -> None:
    """A model on the cache answers without downloading; a second replica on the same node
    starts from the same copy (how much sooner is printed)."""
    applied = time.monotonic()
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(
        _cached_model("affine-cached", namespace, "affine-files", rn.image)))
    runtime_pod = _answering_pod(kube, namespace, rn, "affine-cached",
                                 "the model on the cache to answer")
    first_s = time.monotonic() - applied
    print(f"model on the cache: apply -> first correct inference {first_s:.1f} s; "
          f"ModelCache apply -> first answer {filled_s + first_s:.1f} s")
    scaled = time.monotonic()
    kube.kubectl("-n", namespace, "scale", "md", "affine-cached", "--replicas=2")
    other = _answering_pod(kube, namespace, rn, "affine-cached", "a second replica answering",
                           other_than=runtime_pod["metadata"]["name"])
    second_s = time.monotonic() - scaled
    assert other["spec"]["nodeName"] == rn.node.name
    print(f"second replica on the same node: scale -> answer {second_s:.1f} s = "
          f"{second_s / (filled_s + first_s):.2f} of the first's "
          f"{filled_s + first_s:.1f} s (cache fill {filled_s:.1f} s + start {first_s:.1f} s; "
          f"{PAD_BYTES + (files / 'model.onnx').stat().st_size} bytes at "
          f"{RATE // 2**20} MiB/s per file; load {os.getloadavg()[0]:.1f})")
    assert runtime_pod["spec"]["nodeName"] == rn.node.name
    log = kube.kubectl("-n", namespace, "logs", runtime_pod["metadata"]["name"]).stdout
    assert "downloading model" not in log and "/var/lib/kubemaas/model-cache/model.onnx" in log


def test_cache_from_s3_with_a_credentials_secret(kube: Kube, namespace: str,
                                                 real_node: Node,  # noqa: F811
                                                 model_dir: Path,  # noqa: F811
                                                 operator: Operator, tmp_path: Path) -> None:
    """s3:// from moto's S3 server on the bridge address; the keys reach the download pod from
    a Secret (envFrom) that the operator never reads."""
    from tests.runtime.fetch_helpers import s3_upload
    from tests.runtime.venvs import MOTO, ensure_venv

    python = ensure_venv("moto", MOTO)
    weights = tmp_path / "weights.bin"
    with weights.open("wb") as out:
        out.truncate(64 * 1024 * 1024)
    with _moto(python, real_node.slot.gateway, tmp_path / "moto.log") as endpoint:
        s3_upload(python, endpoint, [
            {"bucket_only": True, "bucket": "models"},
            {"bucket": "models", "key": "affine/model.onnx",
             "path": str(model_dir / MODEL / "model.onnx")},
            {"bucket": "models", "key": "affine/weights.bin", "path": str(weights),
             "multipart": True}])
        kube.kubectl("-n", namespace, "create", "secret", "generic", "s3-creds",
                     "--from-literal=AWS_ACCESS_KEY_ID=testing",
                     "--from-literal=AWS_SECRET_ACCESS_KEY=testing",
                     "--from-literal=AWS_REGION=us-east-1")
        cache = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelCache",
                 "metadata": {"name": "affine-s3", "namespace": namespace},
                 "spec": {"source": {"uri": "s3://models/affine/", "secretName": "s3-creds"},
                          "storage": {"type": "node", "node": {
                              "path": str(tmp_path / "caches"),
                              "nodes": [real_node.node.name]}},
                          "download": {"image": real_node.image, "imagePullPolicy": "Never",
                                       "progressIntervalSeconds": 1,
                                       "env": [{"name": "AWS_ENDPOINT_URL_S3",
                                                "value": endpoint}]}}}
        started = time.monotonic()
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(cache))
        st = _cache_settled(kube, namespace, "affine-s3", "the s3 ModelCache Ready")
        print(f"\ns3 ModelCache filled in {time.monotonic() - started:.1f} s "
              f"(load {os.getloadavg()[0]:.1f}): {st.get('message')}")
        assert st["phase"] == "Ready", st
        assert {f["path"] for f in st["files"]} == {"model.onnx", "weights.bin"}
        done = tmp_path / "caches" / namespace / "affine-s3"
        assert (done / "model.onnx").read_bytes() == (model_dir / MODEL / "model.onnx"
                                                      ).read_bytes()
        (pod,) = get_json(kube, "-n", namespace, "get", "pods", "-l",
                          "serving.kubemaas.io/model-cache=affine-s3")["items"]
        assert pod["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        kube.kubectl("-n", namespace, "delete", "modelcache", "affine-s3", "--wait=true",
                     "--timeout=120s")
        assert list(done.iterdir()) == []


def test_pvc_cache_on_the_real_node(kube: Kube, namespace: str, real_node: Node,  # noqa: F811
                                    model_dir: Path, operator: Operator,  # noqa: F811
                                    tmp_path: Path) -> None:
    """pvc storage with the real kubelet: a hostPath PersistentVolume on the real node (the
    directory owned by uid 10001: a hostPath volume gets no fsGroup ownership change) bound to
    a ReadWriteMany claim; the download pod runs as uid 10001 (Pod Security restricted) and
    fills the claim's directory; the model mounts the claim read-only (subPath) and answers
    without downloading; deletion empties the directory with a clean-up pod, also uid 10001."""
    files = _model_files(tmp_path, model_dir, 16 * 1024 * 1024)
    volume = tmp_path / "pv"
    volume.mkdir()
    os.chown(volume, 10001, 10001)
    pv = f"{namespace}-pv"
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
        bound_host_volume(pv, volume, namespace, "weights", writable=True, on_real_node=True)))
    try:
        with FileServer(files, host=real_node.slot.gateway) as server:
            cache = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelCache",
                     "metadata": {"name": "affine-pvc", "namespace": namespace},
                     "spec": {"source": {"uri": f"{server.url}/index.json"},
                              "storage": {"type": "pvc", "pvc": {"claimName": "weights"}},
                              "download": {"image": real_node.image,
                                           "imagePullPolicy": "Never",
                                           "progressIntervalSeconds": 1,
                                           "tolerations": [real.TOLERATION]}}}
            started = time.monotonic()
            kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(cache))
            st = _cache_settled(kube, namespace, "affine-pvc", "the pvc ModelCache Ready")
        print(f"\npvc ModelCache filled in {time.monotonic() - started:.1f} s "
              f"(load {os.getloadavg()[0]:.1f}): {st.get('message')}")
        assert st["phase"] == "Ready", st
        assert (st["claimName"], st["path"]) == ("weights", "affine-pvc")
        written = volume / "affine-pvc" / "model.onnx"
        assert written.read_bytes() == (files / "model.onnx").read_bytes()
        assert written.stat().st_uid == 10001
        (fetch,) = get_json(kube, "-n", namespace, "get", "pods", "-l",
                            "serving.kubemaas.io/model-cache=affine-pvc")["items"]
        assert fetch["spec"]["nodeName"] == real_node.node.name
        assert fetch["spec"]["securityContext"]["runAsUser"] == 10001

        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(
            _cached_model("affine-on-pvc", namespace, "affine-pvc", real_node.image)))
        pod = _answering_pod(kube, namespace, real_node, "affine-on-pvc", "the model on the claim")
        log = kube.kubectl("-n", namespace, "logs", pod["metadata"]["name"]).stdout
        assert "downloading model" not in log and "/var/lib/kubemaas/model-cache/model.onnx" in log
        mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"]
                     if m["name"] == "model-files")
        assert mount["readOnly"] is True and mount["subPath"] == "affine-pvc"
        _delete_model_then_cache(kube, namespace, "affine-on-pvc", "affine-pvc",
                                 volume / "affine-pvc")
    finally:
        kube.kubectl("-n", namespace, "delete", "md", "affine-on-pvc", "--ignore-not-found",
                     "--wait=false", check=False)
        kube.kubectl("-n", namespace, "delete", "pvc", "weights", "--ignore-not-found",
                     "--wait=false", check=False)
        kube.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


def _model_files(tmp_path: Path, models: Path, pad_bytes: int) -> Path:
    """A directory to serve over http: the affine model from ``models``, ``pad_bytes`` of
    weights beside it and the index of files that an http(s) source names."""
    files = tmp_path / "files"
    files.mkdir()
    shutil.copy(models / MODEL / "model.onnx", files / "model.onnx")
    with (files / "weights.bin").open("wb") as out:
        out.truncate(pad_bytes)
    write_index(files)
    return files


def _cached_model(name: str, namespace: str, cache: str, image: str) -> dict[str, Any]:
    """A ModelDeployment of the affine model on ``cache``, one replica on the real node."""
    return {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"cache": cache, "format": "onnx", "name": MODEL},
                     "runtime": {"image": image, "imagePullPolicy": "Never",
                                 "resources": {"cpu": "250m", "memory": "256Mi"}},
                     "scheduling": {"nodeSelector": {real.LABEL: "true"},
                                    "tolerations": [real.TOLERATION]}, "replicas": 1}}


def _answering_pod(kube: Kube, namespace: str, rn: Node, instance: str, what: str,
                   other_than: str = "") -> dict[str, Any]:
    """The first of the model's pods (other than the one named) whose inference on the
    bridge gives the right answer."""
    def answered() -> dict[str, Any] | None:
        for p in get_json(kube, "-n", namespace, "get", "pods", "-l",
                          f"app.kubernetes.io/instance={instance}")["items"]:
            ip = p.get("status", {}).get("podIP")
            if p["metadata"]["name"] != other_than and ip and infer(rn.slot, ip, MODEL) == Y:
                return dict(p)
        return None
    return dict(wait_for(answered, timeout=180, interval=0.2, what=what,
                         explain=lambda: pods_and_node(kube, namespace, rn.node)))


def _cache_settled(kube: Kube, namespace: str, name: str, what: str) -> dict[str, Any]:
    """The ModelCache's status once Ready or Failed."""
    return dict(wait_for(lambda: (lambda s: s if s.get("phase") in ("Ready", "Failed")
                                  else None)(get_json(kube, "-n", namespace, "get",
                                                      "modelcache", name).get("status") or {}),
                         timeout=240, interval=0.3, what=what))


def _delete_model_then_cache(kube: Kube, namespace: str, model: str, cache: str,
                             directory: Path) -> None:
    """The model and its pods go first; deleting the cache then empties its directory (a
    clean-up pod on the node)."""
    kube.kubectl("-n", namespace, "delete", "md", model, "--wait=true", "--timeout=90s")
    wait_for(lambda: not get_json(kube, "-n", namespace, "get", "pods", "-l",
                                  f"app.kubernetes.io/instance={model}")["items"],
             timeout=90, what="the model's pod gone")
    kube.kubectl("-n", namespace, "delete", "modelcache", cache, "--wait=true",
                 "--timeout=120s")
    assert list(directory.iterdir()) == []


@contextlib.contextmanager
def _moto(python: Path, host: str, log: Path) -> Iterator[str]:
    """moto's S3 server on ``host`` (the bridge address: only the node's pods and this test
    reach it); yields its endpoint URL."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    with log.open("w") as out:
        proc = subprocess.Popen([str(python), "-m", "moto.server", "-H", host, "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                with socket.create_connection((host, port), timeout=1):
                    return True
            except OSError:
                return False
        wait_for(up, timeout=60, what="moto's S3 server")
        yield f"http://{host}:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
