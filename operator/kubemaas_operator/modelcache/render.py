"""PURE: the pods and the claim a ModelCache needs.

- download pod `NAME-fetch-TARGET-aN` (TARGET: `pvc`, or a short hash of the node's name for
  node storage; N: the attempt): `python -m kubemaas_runtime.fetch` from the download image,
  restartPolicy Never (the operator retries with backoff by creating the next attempt), the
  source's Secret as environment (HF_TOKEN, AWS_*), the report on its termination log;
- clean-up pod `NAME-clean-TARGET`: removes the files (deletion with retention Delete);
- evict pod `NAME-evict-TARGET`: removes the files of one node's copy (least recently used);
- claim `NAME-cache` when storage.pvc names a storageClassName and size.

Every object carries the labels below and an owner reference to its ModelCache. Pods for pvc
storage pass Pod Security "restricted"; node storage needs a hostPath volume (and writes as
root into the node's directory), which only "privileged" allows: an administrator's opt-in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .api import API_VERSION, KIND, CacheSpec

CACHE_LABEL = "serving.kubemaas.io/model-cache"  # the ModelCache's name (pods that use it too)
ROLE_LABEL = "serving.kubemaas.io/cache-role"  # fetch, clean, evict
TARGET_LABEL = "serving.kubemaas.io/cache-target"  # pvc or the node's hash
SPEC_LABEL = "serving.kubemaas.io/cache-spec"  # hash of what decides the files
NODE_ANNOTATION = "serving.kubemaas.io/cache-node"
ATTEMPT_ANNOTATION = "serving.kubemaas.io/cache-attempt"
MANAGED_BY = "app.kubernetes.io/managed-by"
FINALIZER = "serving.kubemaas.io/model-cache-cleanup"
CONTAINER = "fetch"
VOLUME_DIR = "/cache-volume"  # pvc: the claim's root in the download pod
NODE_DIR = "/cache"  # node: the cache's own directory in the download pod
TERMINATION_LOG = "/dev/termination-log"
RUNTIME_UID = 10001


@dataclass(frozen=True)
class CacheRef:
    name: str
    namespace: str
    uid: str


def target_id(node: str | None) -> str:
    """`pvc`, or a short stable hash of a node's name (node names can be 253 characters)."""
    return "pvc" if node is None else hashlib.sha256(node.encode()).hexdigest()[:10]


def spec_hash(spec: CacheSpec) -> str:
    """What decides the files: a change means new download pods."""
    src = spec.source
    text = repr((src.uri, src.revision, src.secret_name, src.include, src.exclude,
                 spec.storage, spec.size_limit))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def claim_name(ref: CacheRef, spec: CacheSpec) -> str | None:
    pvc = spec.storage.pvc
    if pvc is None:
        return None
    return pvc.claim_name or f"{ref.name}-cache"


def cache_subpath(ref: CacheRef, spec: CacheSpec) -> str:
    """pvc: the directory inside the claim."""
    pvc = spec.storage.pvc
    return (pvc.sub_path if pvc is not None and pvc.sub_path else ref.name)


def node_dir(ref: CacheRef, spec: CacheSpec) -> str:
    """node: the cache's directory on each node."""
    base = spec.storage.node.path if spec.storage.node is not None else ""
    return f"{base}/{ref.namespace}/{ref.name}"


def _owner(ref: CacheRef) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": ref.name, "uid": ref.uid,
            "controller": True, "blockOwnerDeletion": True}


def labels(ref: CacheRef, role: str, node: str | None, spec: CacheSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kubemaas-model-cache",
            "app.kubernetes.io/instance": ref.name[:63].rstrip("-."),
            MANAGED_BY: "kubemaas", "app.kubernetes.io/part-of": "kubemaas",
            "app.kubernetes.io/component": f"cache-{role}",
            CACHE_LABEL: ref.name[:63].rstrip("-."), ROLE_LABEL: role,
            TARGET_LABEL: target_id(node), SPEC_LABEL: spec_hash(spec)}


def pod_name(ref: CacheRef, role: str, node: str | None, attempt: int = 0) -> str:
    base = f"{ref.name[:200]}-{role}-{target_id(node)}"
    return f"{base}-a{attempt}" if role == "fetch" else base


def cache_volume(ref: CacheRef, spec: CacheSpec, node: str | None) -> tuple[dict[str, Any], str]:
    """The cache's volume in a download or clean-up pod, and where its files go there."""
    if node is None:
        return ({"name": "cache", "persistentVolumeClaim": {"claimName": claim_name(ref, spec)}},
                f"{VOLUME_DIR}/{cache_subpath(ref, spec)}")
    return ({"name": "cache", "hostPath": {"path": node_dir(ref, spec),
                                           "type": "DirectoryOrCreate"}}, NODE_DIR)


def pod_security(node: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod, container) security contexts: non-root and restricted for pvc; root (owner of the
    node's directory) with every capability dropped for node storage."""
    container = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                 "seccompProfile": {"type": "RuntimeDefault"}}
    if node is None:
        return ({"runAsNonRoot": True, "runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID,
                 "fsGroup": RUNTIME_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                {**container, "runAsNonRoot": True})
    return ({"runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}}, container)


def _placement(spec: CacheSpec, node: str | None) -> dict[str, Any]:
    if node is not None:  # bound to its node; taints that only keep the scheduler away do not apply
        return {"nodeName": node, "tolerations": [{"operator": "Exists"}]}
    tolerations = [dict(t) for t in spec.download.tolerations]
    return {"tolerations": tolerations} if tolerations else {}


def fetch_args(spec: CacheSpec, dest: str) -> list[str]:
    src, d = spec.source, spec.download
    args = ["--source", src.uri, "--dest", dest]
    if src.revision:
        args += ["--revision", src.revision]
    for pattern in src.include:
        args += ["--include", pattern]
    for pattern in src.exclude:
        args += ["--exclude", pattern]
    args += ["--parallel", str(d.parallel), "--stall-timeout", str(d.stall_timeout_seconds),
             "--retries", str(d.retries), "--progress-interval", str(d.progress_interval_seconds),
             "--termination-log", TERMINATION_LOG]
    return args


def _secret_env(spec: CacheSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, envFrom) for the source's Secret: the pod reads it, the operator never does."""
    name = spec.source.secret_name
    if name is None:
        return [], []
    if spec.source.scheme == "hf":
        return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": name, "key": "token"}}}], []
    return [], [{"secretRef": {"name": name}}]


def _resources(spec: CacheSpec) -> dict[str, Any]:
    d = spec.download
    requests = {"cpu": d.resources.cpu or "250m", "memory": d.resources.memory or "512Mi"}
    return {"requests": requests, "limits": {"memory": requests["memory"]}}


def cache_pod(ref: CacheRef, spec: CacheSpec, role: str, node: str | None, attempt: int,
         container: Mapping[str, Any]) -> dict[str, Any]:
    pod_sc, _ = pod_security(node)
    volume, _ = cache_volume(ref, spec, node)
    meta: dict[str, Any] = {
        "name": pod_name(ref, role, node, attempt), "namespace": ref.namespace,
        "labels": labels(ref, role, node, spec), "ownerReferences": [_owner(ref)],
        "annotations": {ATTEMPT_ANNOTATION: str(attempt),
                        **({NODE_ANNOTATION: node} if node is not None else {})}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "enableServiceLinks": False, "securityContext": pod_sc,
                     **_placement(spec, node), "volumes": [volume],
                     "containers": [dict(container)]}}


def download_pod(ref: CacheRef, spec: CacheSpec, node: str | None, attempt: int) -> dict[str, Any]:
    """The pod that fills one copy (node None: the claim)."""
    _, container_sc = pod_security(node)
    _, dest = cache_volume(ref, spec, node)
    env, env_from = _secret_env(spec)
    env += [{"name": e.name, "value": e.value} for e in spec.download.env]
    container: dict[str, Any] = {
        "name": CONTAINER, "image": spec.download.image,
        "command": ["python", "-m", "kubemaas_runtime.fetch"], "args": fetch_args(spec, dest),
        "env": env, "resources": _resources(spec), "securityContext": container_sc,
        "terminationMessagePath": TERMINATION_LOG, "terminationMessagePolicy": "File",
        "volumeMounts": [{"name": "cache", "mountPath": NODE_DIR if node else VOLUME_DIR}]}
    if env_from:
        container["envFrom"] = env_from
    if spec.download.image_pull_policy:
        container["imagePullPolicy"] = spec.download.image_pull_policy
    return cache_pod(ref, spec, "fetch", node, attempt, container)


def removal_pod(ref: CacheRef, spec: CacheSpec, node: str | None, role: str) -> dict[str, Any]:
    """A pod that removes one copy's files: role `clean` (the ModelCache is deleted) or `evict`
    (a node's budget needs the room)."""
    _, container_sc = pod_security(node)
    _, dest = cache_volume(ref, spec, node)
    container: dict[str, Any] = {
        "name": "remove", "image": spec.download.image,
        "command": ["python", "-c", "import os, shutil, sys; d = sys.argv[1]; "
                    "[shutil.rmtree(os.path.join(d, e), ignore_errors=True) "
                    "if os.path.isdir(os.path.join(d, e)) else os.remove(os.path.join(d, e)) "
                    "for e in (os.listdir(d) if os.path.isdir(d) else [])]", dest],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                      "limits": {"memory": "64Mi"}},
        "securityContext": container_sc,
        "volumeMounts": [{"name": "cache", "mountPath": NODE_DIR if node else VOLUME_DIR}]}
    if spec.download.image_pull_policy:
        container["imagePullPolicy"] = spec.download.image_pull_policy
    return cache_pod(ref, spec, role, node, 0, container)


def claim(ref: CacheRef, spec: CacheSpec) -> dict[str, Any] | None:
    """The claim the operator creates (storageClassName + size); owned by the ModelCache only
    with retention Delete, so Retain keeps it after the ModelCache is gone."""
    pvc = spec.storage.pvc
    if pvc is None or pvc.claim_name is not None:
        return None
    meta: dict[str, Any] = {"name": claim_name(ref, spec), "namespace": ref.namespace,
                            "labels": labels(ref, "claim", None, spec)}
    meta["labels"].pop(SPEC_LABEL)
    if spec.retention == "Delete":
        meta["ownerReferences"] = [_owner(ref)]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": pvc.storage_class_name,
                     "resources": {"requests": {"storage": pvc.size}}}}
