"""The contract of spec.serving.auth and spec.serving.tls between the operator and the runtime:
take the container the operator wrote into the cluster, materialise the Secrets it mounts from
the cluster's own Secret objects into directories written the way the kubelet writes a Secret
volume, start the runtime from the container's command and env on 127.0.0.1, and talk to it as a
client would: HTTPS verified against the test's CA (the probes' scheme), 401 without a key and
200 with it, a key rotated in the cluster accepted without a restart and the old one refused,
and /metrics on the runtime's own plain-HTTP port without a key."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubemaas_testbed.cluster import free_port
from kubemaas_testbed.processes import stop_child
from tests.cluster.conftest import Operator
from tests.cluster.test_operator import apply, get, md
from tests.cluster.test_operator_runtime_contract import _tiny_onnx
from tests.conftest import Kube
from tests.helpers import wait_for
from tests.runtime.secrets_helpers import CA, request, write_secret

pytestmark = pytest.mark.cluster

INFER = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                "data": [1, 2, 3, 4]}]}).encode()


def _secret_files(kube: Kube, namespace: str, volume: dict[str, Any]) -> dict[str, bytes]:
    """What the kubelet would put in the Secret volume: every key, or the listed items."""
    secret = get(kube, namespace, "secret", volume["secret"]["secretName"])
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    items = volume["secret"].get("items")
    if not items:
        return data
    return {item["path"]: data[item["key"]] for item in items}


def test_runtime_from_the_written_container_serves_https_and_wants_a_key(
        kube: Kube, namespace: str, operator: Operator, tmp_path: Path) -> None:
    ca, first_key = _cluster_secrets(kube, namespace, tmp_path)
    store = tmp_path / "store"
    _tiny_onnx(store / "tiny" / "model.onnx")
    port = free_port()
    apply(kube, namespace, md("guarded", model={"uri": "pvc://store/tiny/model.onnx",
                                                "format": "onnx", "name": "tiny"},
                              serving={"port": port, "auth": {"secretName": "tiny-keys"},
                                       "tls": {"secretName": "tiny-cert"}}))
    wait_for(lambda: get(kube, namespace, "deployment", "guarded"), timeout=30,
             what="the Deployment")
    pod = get(kube, namespace, "deployment", "guarded")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    local = _local_volumes(kube, namespace, container, volumes, store, tmp_path)
    env = _local_env(container, local)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env["KUBEMAAS_METRICS_PORT"] == str(ports["metrics"])
    metrics_port = free_port()
    env["KUBEMAAS_METRICS_PORT"] = str(metrics_port)

    command = [sys.executable, *container["command"][1:], *container.get("args", [])]
    log = tmp_path / "runtime.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env={"PATH": os.environ["PATH"],
                                              "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
                                              "HOME": str(tmp_path), **env},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        trusted = ca.client_context()
        _check_https_probes(proc, log, container, ports["http"], trusted)
        _check_keys(ports["http"], first_key, trusted)

        # /metrics: on its own port, plain HTTP, no key (Prometheus has none).
        status, _, text = request(metrics_port, "GET", "/metrics")
        assert status == 200 and b"kubemaas" in text

        # Rotate the key in the cluster; the kubelet would swap the volume's ..data link.
        second_key = hashlib.sha256(b"frontend-2" + os.urandom(16)).hexdigest()
        rotated = kube.kubectl("-n", namespace, "create", "secret", "generic", "tiny-keys",
                               f"--from-literal=frontend={second_key}", "--dry-run=client",
                               "-o", "json").stdout
        kube.kubectl("-n", namespace, "apply", "-f", "-", input=rotated)
        keys_mount = next(m["mountPath"] for m in container["volumeMounts"]
                          if m["name"] == "api-keys")
        write_secret(local[keys_mount], _secret_files(kube, namespace, volumes["api-keys"]))

        def answers(key: str) -> int:
            return _infer(ports["http"], trusted, {"Authorization": f"Bearer {key}"})[0]

        wait_for(lambda: answers(second_key) == 200, timeout=30,
                 what="the rotated key to be accepted")
        assert answers(first_key) == 401
        assert proc.poll() is None, "the runtime restarted"
    finally:
        stop_child(proc)


def _cluster_secrets(kube: Kube, namespace: str, tmp_path: Path) -> tuple[CA, str]:
    """The serving certificate (issued by a test CA) and an API key, as Secrets in the
    namespace: tiny-cert and tiny-keys."""
    ca = CA(tmp_path / "ca")
    leaf = ca.issue(1)
    (tmp_path / "tls.crt").write_bytes(leaf["tls.crt"])
    (tmp_path / "tls.key").write_bytes(leaf["tls.key"])
    kube.kubectl("-n", namespace, "create", "secret", "tls", "tiny-cert",
                 f"--cert={tmp_path / 'tls.crt'}", f"--key={tmp_path / 'tls.key'}")
    first_key = hashlib.sha256(b"frontend-1" + os.urandom(16)).hexdigest()
    kube.kubectl("-n", namespace, "create", "secret", "generic", "tiny-keys",
                 f"--from-literal=frontend={first_key}")
    return ca, first_key


def _local_volumes(kube: Kube, namespace: str, container: dict[str, Any],
                   volumes: dict[str, dict[str, Any]], store: Path,
                   tmp_path: Path) -> dict[str, Path]:
    """The container's mount points as local directories: Secrets written as the kubelet
    writes them, the model store as the test's, the rest empty."""
    local: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        local[mount["mountPath"]] = tmp_path / "volumes" / mount["name"]
        volume = volumes[mount["name"]]
        if "secret" in volume:
            write_secret(local[mount["mountPath"]], _secret_files(kube, namespace, volume))
        elif mount["name"] == "model-store":
            local[mount["mountPath"]] = store
        else:
            local[mount["mountPath"]].mkdir(parents=True)
    return local


def _local_env(container: dict[str, Any], local: dict[str, Path]) -> dict[str, str]:
    """The container's env, its paths under a mount point following the mount's directory.
    (The caller moves the metrics port to a free one: on this machine the test stands in for
    the pod's own network namespace.)"""
    env = {e["name"]: e["value"] for e in container["env"]}
    for key, value in list(env.items()):
        for mount_path, directory in local.items():
            if mount_path in value:  # a path, or a file:// URI under the mount
                env[key] = value.replace(mount_path, str(directory), 1)
    return env


def _check_https_probes(proc: subprocess.Popen[bytes], log: Path, container: dict[str, Any],
                        port: int, trusted: ssl.SSLContext) -> None:
    """The probes are HTTPS, pass without a key, and an untrusting client cannot connect."""
    ready = container["readinessProbe"]["httpGet"]
    assert ready["scheme"] == "HTTPS"

    def probe_passes() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return request(port, "GET", ready["path"], tls=trusted)[0] == 200
        except OSError:
            return False

    wait_for(probe_passes, timeout=90, what=f"the HTTPS readiness probe (log: {log})")
    for probe in ("livenessProbe", "startupProbe"):  # open to the kubelet without a key
        assert request(port, "GET", container[probe]["httpGet"]["path"],
                       tls=trusted)[0] == 200
    # A client that does not trust the test's CA cannot even connect.
    with pytest.raises(ssl.SSLCertVerificationError):
        request(port, "GET", ready["path"], tls=ssl.create_default_context())


def _infer(port: int, trusted: ssl.SSLContext, headers: dict[str, str]) -> tuple[int, Any]:
    status, _, body = request(port, "POST", "/v2/models/tiny/infer", INFER,
                              {"Content-Type": "application/json", **headers}, tls=trusted)
    return status, body


def _check_keys(port: int, key: str, trusted: ssl.SSLContext) -> None:
    """401 without a key or with a wrong one; 200 with the key as a bearer token or x-api-key."""
    status, body = _infer(port, trusted, {})
    assert status == 401 and "error" in body, body
    assert _infer(port, trusted, {"Authorization": "Bearer wrong"})[0] == 401
    status, body = _infer(port, trusted, {"Authorization": f"Bearer {key}"})
    assert status == 200 and body["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0], body
    assert _infer(port, trusted, {"x-api-key": key})[0] == 200
