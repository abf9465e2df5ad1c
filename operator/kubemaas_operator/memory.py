"""What this process wrote for each ModelDeployment, until the watch streams catch up: the
children it applied, the statuses it wrote, the manifests the API server refused, renders and
template lookups (a pass that reads a stale index would otherwise write again)."""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from dataclasses import fields
from typing import Any

from .api import ModelDeploymentSpec, parse_spec
from .observed import DeploymentInfo, settled_deployment_info
from .render import (
    CANARY_TRACK,
    CHILD_KINDS,
    SPEC_HASH,
    STABLE_TRACK,
    RenderContext,
    Rendered,
    canary_name,
    digest,
    render,
    track_service_name,
)
from .sizing import size_gpus


def _rv(obj: Mapping[str, Any] | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


class Memory:
    """What this process applied, until the watch streams catch up (avoids duplicate writes)."""

    def __init__(self) -> None:
        self._applied: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._templates: dict[str, tuple[float, dict[str, str] | None]] = {}
        self._rejected: dict[tuple[str, str, str], tuple[str, str]] = {}
        # a child a policy or RBAC refused: its spec-hash, when (monotonic), the reason, message
        self._refused: dict[tuple[str, str, str], tuple[str, float, str, str]] = {}
        self._renders: dict[str, tuple[ModelDeploymentSpec, Rendered]] = {}
        self._statuses: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self._told: set[tuple[str, str, str]] = set()
        self._failed_writes: dict[tuple[str, str], int] = {}
        self._status_failures: dict[tuple[str, str], int] = {}
        # a failing write waiting for its retry: what it wrote (a key), until (monotonic), what
        # the reconcile said (api_failures.held_failure)
        self._holds: dict[tuple[str, str, str], tuple[Hashable, float, Any]] = {}
        self._settled: dict[tuple[str, str], str] = {}  # Deployment -> spec its status describes

    def first_time(self, namespace: str, name: str, what: str) -> bool:
        """True once per model and message (for log lines that must not repeat every look)."""
        key = (namespace, name, what)
        if key in self._told:
            return False
        self._told.add(key)
        return True

    def write_failed(self, namespace: str, name: str) -> int:
        """Counts a reconcile of the model whose write the API server failed; how many in a
        row now."""
        key = (namespace, name)
        self._failed_writes[key] = self._failed_writes.get(key, 0) + 1
        return self._failed_writes[key]

    def writes_went_through(self, namespace: str, name: str) -> None:
        self._failed_writes.pop((namespace, name), None)
        self._holds.pop((namespace, name, "children"), None)

    def hold(self, namespace: str, name: str, key: Hashable, seconds: float, value: Any,
             what: str = "children") -> None:
        """Keep `value` for the model's `what` write for `seconds`, while what it writes stays
        `key` (a failing write waiting for its retry)."""
        self._holds[(namespace, name, what)] = (key, time.monotonic() + seconds, value)

    def held(self, namespace: str, name: str, key: Hashable,
             what: str = "children") -> tuple[Any, float] | None:
        """What hold() kept for the model and the seconds left, while `key` is the same."""
        entry = self._holds.get((namespace, name, what))
        if entry is None or entry[0] != key:
            return None
        left = entry[1] - time.monotonic()
        return (entry[2], left) if left > 0 else None

    def wrote_status(self, namespace: str, name: str, response: Mapping[str, Any],
                     status: dict[str, Any]) -> int:
        """Remembers the status written; how many writes of it had failed in a row before."""
        self._statuses[(namespace, name)] = (_rv(response), status)
        self._holds.pop((namespace, name, "status"), None)
        return self._status_failures.pop((namespace, name), 0)

    def status_write_failed(self, namespace: str, name: str) -> int:
        """Counts a failed write of the model's status; how many in a row now."""
        key = (namespace, name)
        self._status_failures[key] = self._status_failures.get(key, 0) + 1
        return self._status_failures[key]

    def previous_status(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The model's status as last written: ours if the watch has not caught up yet."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        mine = self._statuses.get(key)
        if mine is not None:
            if _rv(body) < mine[0]:
                return mine[1]
            self._statuses.pop(key, None)
        return dict(body.get("status") or {})

    def render(self, raw_spec: Mapping[str, Any], ctx: RenderContext,
               template_name: str) -> tuple[ModelDeploymentSpec, Rendered]:
        """parse + render, memoized: most reconciles (a pod's event, a resync) change neither.
        Keyed by every field of the context (a hand-picked list left out whether InferencePools
        are served: a keyed model kept its pods without KUBEMAAS_METRICS_WITHOUT_KEY once the
        Inference Extension's CRDs came, and the picker's scrapes were refused)."""
        key = digest([raw_spec, template_name,
                      *(repr(getattr(ctx, f.name)) for f in fields(ctx))], 32)
        hit = self._renders.get(key)
        if hit is None:  # gpu.count auto: sized from the model's shape and the GPU node types
            spec = size_gpus(parse_spec(raw_spec), ctx.gpu_types, ctx.model_record)
            hit = (spec, render(spec, ctx))
            if len(self._renders) >= 256:
                self._renders.pop(next(iter(self._renders)))
            self._renders[key] = hit
        return hit

    def rejected(self, child: Mapping[str, Any]) -> str | None:
        """The API server's message if it already refused exactly this manifest."""
        meta = child["metadata"]
        entry = self._rejected.get((child["kind"], meta["namespace"], meta["name"]))
        if entry is not None and entry[0] == meta["annotations"][SPEC_HASH]:
            return entry[1]
        return None

    def reject(self, child: Mapping[str, Any], message: str) -> None:
        meta = child["metadata"]
        self._rejected[(child["kind"], meta["namespace"], meta["name"])] = (
            meta["annotations"][SPEC_HASH], message)

    def held_refusal(self, child: Mapping[str, Any], hold_s: float) -> tuple[str, str] | None:
        """(reason, message) of a policy's or RBAC's refusal of exactly this manifest less than
        `hold_s` ago: not asked again before then, whatever wakes the model (its own events,
        its children's), since the policy changes by hand, not with them."""
        meta = child["metadata"]
        entry = self._refused.get((child["kind"], meta["namespace"], meta["name"]))
        if (entry is None or entry[0] != meta["annotations"][SPEC_HASH]
                or time.monotonic() - entry[1] >= hold_s):
            return None
        return entry[2], entry[3]

    def hold_refusal(self, child: Mapping[str, Any], reason: str, message: str) -> None:
        meta = child["metadata"]
        self._refused[(child["kind"], meta["namespace"], meta["name"])] = (
            meta["annotations"][SPEC_HASH], time.monotonic(), reason, message)

    def remember(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        meta.pop("managedFields", None)
        self._applied[(obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))] = obj

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._applied.pop((kind, namespace, name), None)
        if kind == "Deployment":
            self._settled.pop((namespace, name), None)

    def deployment(self, dep: Mapping[str, Any]) -> DeploymentInfo:
        """The Deployment's info, its generation gap closed when only its metadata moved since
        its status last described its spec (observed.settled_deployment_info)."""
        meta = dep.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        info, settled = settled_deployment_info(dep, self._settled.get(key))
        if settled is not None:
            self._settled[key] = settled
        return info

    def forget_all(self, namespace: str, name: str) -> None:
        self._statuses.pop((namespace, name), None)
        self._failed_writes.pop((namespace, name), None)
        self._holds = {k: v for k, v in self._holds.items() if k[:2] != (namespace, name)}
        self._status_failures.pop((namespace, name), None)
        self._told = {t for t in self._told if t[:2] != (namespace, name)}
        self.forget("Deployment", namespace, canary_name(name))
        self.forget("HTTPRoute", namespace, name)
        self.forget("InferencePool", namespace, name)
        for track in (STABLE_TRACK, CANARY_TRACK):
            self.forget("Service", namespace, track_service_name(name, track))
        for _, kind in CHILD_KINDS:
            self.forget(kind, namespace, name)
            self._rejected.pop((kind, namespace, name), None)
            self._refused.pop((kind, namespace, name), None)

    def freshest(self, kind: str, namespace: str, name: str,
                 observed: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        mine = self._applied.get((kind, namespace, name))
        if mine is None:
            return observed
        if observed is not None and _rv(observed) >= _rv(mine):
            self._applied.pop((kind, namespace, name), None)
            return observed
        return mine

    def templates(self, key: str, ttl: float) -> tuple[bool, dict[str, str] | None]:
        entry = self._templates.get(key)
        if entry is None or time.monotonic() - entry[0] > ttl:
            return False, None
        return True, entry[1]

    def cache_templates(self, key: str, data: dict[str, str] | None) -> None:
        self._templates[key] = (time.monotonic(), data)
