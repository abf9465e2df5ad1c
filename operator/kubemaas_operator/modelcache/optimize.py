"""PURE: ``spec.model.optimize`` of the models on a ModelCache, done once in the cache.

The option sets come from the ModelDeployments that name the cache and ask for ``optimize``:
one *key* per (format, options) (render/optimization.py ``options_key``), so two models with the
same options share one optimization and models with other options get their own. For each key
and each Ready copy (the claim, or each node's directory) one optimize pod
``NAME-optimize-KEY8-TARGET`` runs the runtime image's optimize step on the cache's files with
``--publish`` (runtime optimize/cached.py): it writes the optimized model, its report and
``result.json`` into ``<cache>/.kubemaas-optimized/<key>/`` and puts the report on its
termination log, which becomes the key's entry in ``status.optimizations``. The model pods mount
the cache read-only and their optimize init container serves that result without optimizing
(render/cached_optimization.py).

The pod carries the cache's labels (the spec hash too: a new download deletes it with the
download pods, and a new one runs on the new files), ``restartPolicy: Never`` and one attempt: a
pod that fails without a report marks the key Failed on that copy, and the model pods there
optimize themselves, as without a cache; deleting the pod runs it again. Pods of keys no model
asks for any more are deleted (their files stay in the cache until it is deleted).

It measures on the CPU, with the CPU and memory the first model (by name) of that key asks for:
a node cache's pod is bound to its node with ``nodeName`` and a claim's pod goes anywhere, so
neither can claim the models' GPUs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..api import ModelDeploymentSpec
from ..render.optimization import OPTIMIZED_DIR, options_env, options_key
from .api import CacheSpec
from .render import (
    NODE_DIR,
    TERMINATION_LOG,
    VOLUME_DIR,
    CacheRef,
    cache_pod,
    cache_volume,
    labels,
    pod_security,
    spec_hash,
    target_id,
)
from .status import CachePod, Copy

ROLE = "optimize"
CONTAINER = "optimize"
KEY_LABEL = "serving.kubemaas.io/optimize-key"
DEFAULT_CPU, DEFAULT_MEMORY = "1", "2Gi"
REPORT_KEYS = ("serving", "reason", "quantize", "convert", "guard", "sizeBytes", "latencyMs",
               "errors", "device", "probe", "seconds", "sha256", "servedFile", "truncated")


@dataclass(frozen=True)
class Want:
    """One option set the models on the cache ask for."""

    key: str
    format: str
    image: str
    image_pull_policy: str | None
    options: tuple[tuple[str, str], ...]  # the optimize step's environment
    user_env: tuple[tuple[str, str], ...] = ()  # the first model's spec.runtime.env
    cpu: str | None = None
    memory: str | None = None
    models: tuple[str, ...] = ()


@dataclass
class OptimizePlan:
    entries: list[dict[str, Any]] = field(default_factory=list)  # status.optimizations
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)


def wants(models: Sequence[tuple[str, ModelDeploymentSpec]], default_image: str) -> list[Want]:
    """The option sets of the models that ask for optimize, one per key, sorted by key."""
    out: dict[str, Want] = {}
    for name, spec in sorted(models, key=lambda m: m[0]):
        if spec.model.optimize is None:
            continue
        key = options_key(spec)
        if key in out:
            out[key] = dataclasses.replace(out[key], models=(*out[key].models, name))
            continue
        res = spec.runtime.resources
        out[key] = Want(key=key, format=spec.model.format, image=spec.runtime.image
                        or default_image, image_pull_policy=spec.runtime.image_pull_policy,
                        options=tuple((e["name"], e["value"]) for e in options_env(spec)),
                        user_env=tuple((e.name, e.value) for e in spec.runtime.env),
                        cpu=res.cpu, memory=res.memory, models=(name,))
    return [out[k] for k in sorted(out)]


def optimized_path(dest: str, key: str) -> str:
    return f"{dest}/{OPTIMIZED_DIR}/{key}"


def optimize_pod(ref: CacheRef, spec: CacheSpec, node: str | None, want: Want) -> dict[str, Any]:
    """The pod that optimizes one copy (node None: the claim) for one option set."""
    _, container_sc = pod_security(node)
    _, dest = cache_volume(ref, spec, node)
    env = [{"name": "KUBEMAAS_MODEL_URI", "value": f"file://{dest}"},
           {"name": "KUBEMAAS_MODEL_FORMAT", "value": want.format},
           {"name": "KUBEMAAS_OPTIMIZE_DIR", "value": optimized_path(dest, want.key)},
           {"name": "KUBEMAAS_OPTIMIZE_PUBLISH", "value": "1"},
           {"name": "KUBEMAAS_DEVICE", "value": "cpu"},
           *({"name": k, "value": v} for k, v in want.options),
           *({"name": k, "value": v} for k, v in want.user_env)]
    memory = want.memory or DEFAULT_MEMORY
    container: dict[str, Any] = {
        "name": CONTAINER, "image": want.image,
        "command": ["python", "-m", "kubemaas_runtime.optimize"], "env": env,
        "resources": {"requests": {"cpu": want.cpu or DEFAULT_CPU, "memory": memory},
                      "limits": {"memory": memory}},
        "securityContext": container_sc,
        "terminationMessagePath": TERMINATION_LOG, "terminationMessagePolicy": "File",
        "volumeMounts": [{"name": "cache", "mountPath": NODE_DIR if node else VOLUME_DIR}]}
    if want.image_pull_policy:
        container["imagePullPolicy"] = want.image_pull_policy
    pod = cache_pod(ref, spec, ROLE, node, 0, container)
    pod["metadata"]["name"] = f"{ref.name[:200]}-{ROLE}-{want.key[:8]}-{target_id(node)}"
    pod["metadata"]["labels"] = {**labels(ref, ROLE, node, spec), KEY_LABEL: want.key}
    return pod


def _report(pod: CachePod) -> dict[str, Any] | str:
    """The pod's report, or why there is none."""
    text = pod.message or ""
    if pod.exit_code == 0 and text:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            return f"{pod.name} left an unreadable report: {exc}"
        if isinstance(doc, dict):
            return {k: doc[k] for k in REPORT_KEYS if k in doc}
    return (text.strip() or f"{pod.name} ended with exit code {pod.exit_code} and no report; "
            "see its log")[:1024]


def copy_entry(want: Want, node: str | None, pod: CachePod | None) -> dict[str, Any]:
    """One copy's state for one key (the pod is that copy's optimize pod, if any)."""
    entry: dict[str, Any] = {"name": node} if node is not None else {}
    if pod is None or pod.phase in ("Pending", "Running"):
        what = "waiting for its pod" if pod is None else f"pod {pod.name}" + (
            f" cannot start: {pod.waiting}" if pod.phase == "Pending" and pod.waiting else "")
        return {**entry, "phase": "Optimizing", "reason": "Optimizing", "message": what}
    found = _report(pod) if pod.phase == "Succeeded" else (
        pod.message or f"{pod.name} failed (exit code {pod.exit_code}); see its log")
    if isinstance(found, str):
        return {**entry, "phase": "Failed", "reason": "OptimizeFailed", "message": found[:1024],
                "serving": "self"}
    serving = str(found.get("serving") or "unknown")
    reason = "Optimized" if serving == "optimized" else (
        "OptimizeFailed" if str(found.get("reason") or "").startswith("optimization failed")
        else "OptimizationRejected")  # the step failed (the original serves) / the guard did
    return {**entry, "phase": "Ready", "reason": reason,
            "message": str(found.get("reason") or "")[:1024], "serving": serving,
            "report": found}


def _camel(env_name: str) -> str:
    """MAX_REL_ERROR -> maxRelError (the API's spelling)."""
    first, *rest = env_name.lower().split("_")
    return first + "".join(w.capitalize() for w in rest)


def _aggregate(want: Want, copies: list[dict[str, Any]], node_storage: bool) -> dict[str, Any]:
    options = {_camel(k.removeprefix("KUBEMAAS_OPTIMIZE_").removeprefix("KUBEMAAS_")): v
               for k, v in want.options}
    entry: dict[str, Any] = {"key": want.key, "models": list(want.models), "options": options}
    if not copies:
        return {**entry, "phase": "Pending", "reason": "NoReadyCopy",
                "message": "waiting for a Ready copy of the files"}
    failed = [c for c in copies if c["phase"] == "Failed"]
    running = [c for c in copies if c["phase"] == "Optimizing"]
    first = failed[0] if failed else (running[0] if running else copies[0])
    phase = "Failed" if failed else ("Optimizing" if running else "Ready")
    where = f" on {first['name']}" if first.get("name") else ""
    entry.update(phase=phase, reason=first["reason"], message=f"{first['message']}{where}"[:1024])
    report = next((c["report"] for c in copies if c.get("report")), None)
    if report is not None:
        entry.update(serving=report.get("serving"), report=report)
    if node_storage:
        entry["nodes"] = [{k: v for k, v in c.items() if k != "report"} for c in copies]
    return entry


def plan(ref: CacheRef, spec: CacheSpec, copies: Sequence[Copy], pods: Sequence[CachePod],
         wanted: Sequence[Want]) -> OptimizePlan:
    """The optimize pods to create and delete, and ``status.optimizations``."""
    out = OptimizePlan()
    current, keys = spec_hash(spec), {w.key for w in wanted}
    mine = [p for p in pods if p.role == ROLE and not p.deleting]
    for p in mine:
        if p.key not in keys and p.spec_hash == current:  # older specs: copy_state deletes them
            out.delete.append(p.name)
    by_target: Mapping[tuple[str, str], CachePod] = {
        (p.key, p.target): p for p in mine if p.spec_hash == current}
    ready = [c.node for c in copies if c.phase == "Ready"]
    held = {p.name for p in pods if p.role == ROLE}
    for want in wanted:
        states = []
        for node in ready:
            pod = by_target.get((want.key, target_id(node)))
            if pod is None:
                manifest = optimize_pod(ref, spec, node, want)
                # not while an older pod of that name goes (an older spec's, or of a key no
                # model wanted a moment ago): the apply would patch it, and the API server
                # refuses a pod's spec change (the cache failed, PodRejected); its deletion
                # queues the cache again
                if manifest["metadata"]["name"] not in held:
                    out.create.append(manifest)
            states.append(copy_entry(want, node, pod))
        out.entries.append(_aggregate(want, states, spec.storage.type == "node"))
    return out



def events(previous: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]]
           ) -> list[tuple[str, str, str]]:
    """(type, reason, message) for the ModelCache when an option set's outcome changes: Normal
    Optimized, Warning OptimizationRejected (the guard failed: the original serves) or Warning
    OptimizeFailed (the model pods optimize themselves)."""
    before = {str(e.get("key")): e.get("reason") for e in previous}
    out = []
    for e in entries:
        reason = str(e.get("reason") or "")
        if reason not in ("Optimized", "OptimizationRejected", "OptimizeFailed") or (
                before.get(str(e.get("key"))) == reason):
            continue
        what = ", ".join(f"{k} {v}" for k, v in sorted((e.get("options") or {}).items()))
        models = ", ".join(e.get("models") or [])
        message = {"Optimized": "serving the optimized model",
                   "OptimizationRejected": "the accuracy guard failed, the original serves",
                   "OptimizeFailed": "optimizing failed"}[reason]
        out.append(("Normal" if reason == "Optimized" else "Warning", reason,
                    f"{what} (models {models}): {message}: {e.get('message') or ''}"[:1024]))
    return out
