"""PURE: ``status.optimization`` from the optimize init container's termination message.

The runtime pod cannot write to the API (it has no credentials, by design), and the operator
sends no traffic to pods. The one channel both sides have is the pod's status: the kubelet
copies an init container's termination message (``/dev/termination-log``, at most 4 KiB) into
``status.initContainerStatuses[].state.terminated.message``, which the operator already watches.
The optimize step writes its report there as one JSON line; it stays on the pod for the pod's
life, so the figures survive operator restarts and need no extra object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

INIT_CONTAINER = "optimize"  # render/optimization.py names it


def report_of_pod(pod: Mapping[str, Any]) -> str:
    """The optimize init container's termination message when it finished, else ""."""
    for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if cs.get("name") != INIT_CONTAINER:
            continue
        term = (cs.get("state") or {}).get("terminated") or (
            (cs.get("lastState") or {}).get("terminated")) or {}
        if term.get("exitCode") == 0 and term.get("message"):
            return str(term["message"])
    return ""


def status_of(pods: Sequence[tuple[str, str, str]], revision: str) -> dict[str, Any] | None:
    """The report of a pod of ``revision`` (else of any pod), as ``status.optimization``;
    ``pods`` holds (name, revision, termination message) of pods not terminating."""
    ranked = sorted((p for p in pods if p[2]), key=lambda p: (p[1] != revision, p[0]))
    if not ranked:
        return None
    name, _, message = ranked[0]
    try:
        report = json.loads(message)
        if not isinstance(report, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return {"pod": name, "serving": "unknown", "reason": f"unreadable report: {exc}"}
    report.pop("cached", None)  # differs between pods of one revision: not part of the status
    report["pod"] = name
    return report


def summary(report: Mapping[str, Any]) -> str:
    """One line with the figures, for Events."""
    what = [str(report["quantize"])] if report.get("quantize") else []
    if report.get("convert"):
        what.append(f"convert {report['convert']}")
    parts = [" + ".join(what)]
    size = report.get("sizeBytes") or {}
    if size.get("original"):
        parts.append(f"size {size['original']} -> {size.get('optimized')} bytes")
    lat = report.get("latencyMs") or {}
    for key in sorted(lat.get("original") or {}):
        parts.append(f"{key} {lat['original'][key]} -> {(lat.get('optimized') or {}).get(key)} ms")
    for out, errs in sorted((report.get("errors") or {}).items()):
        parts.append(f"{out}: " + ", ".join(f"{k} {v}" for k, v in sorted(errs.items())))
    return "; ".join(p for p in parts if p)


def events(prev: Mapping[str, Any] | None,
           new: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """(type, reason, message) when the report changed: a Warning when the original serves."""
    if not new or (prev and {k: v for k, v in prev.items() if k != "pod"}
                   == {k: v for k, v in new.items() if k != "pod"}):
        return []
    if new.get("serving") == "optimized":
        return [("Normal", "Optimized", f"serving the optimized model: {summary(new)}")]
    return [("Warning", "OptimizationRejected",
             f"serving the original model: {new.get('reason')}; {summary(new)}")]
