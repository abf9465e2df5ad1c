"""PURE: the Events of status.autoscaling (render/autoscaler.py decides the engine; status.py
posts what changed). Kept apart from render so that status imports no renderer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

FALLBACK_REASONS = ("KEDANotInstalled", "PrometheusNotConfigured")


class _Reported(Protocol):
    def status(self) -> dict[str, Any]: ...


def status(engine: _Reported | None, wake: _Reported | None) -> dict[str, Any] | None:
    """status.autoscaling: the engine's choice (render/autoscaler.py) and, for a model that may go
    to zero, whether its first request wakes it (wakeOnRequest, render/wake.py)."""
    if engine is None:
        return None
    out = engine.status()
    if wake is not None:
        out["wakeOnRequest"] = wake.status()
    return out


def events(prev: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[
        tuple[str, str, str]]:
    """(type, reason, message) when the engine or its reason changed: a Warning for a fallback,
    Normal otherwise; and a Warning when a model that may go to zero cannot be woken by a
    request (wakeOnRequest unavailable), once per change."""
    if not new:
        return []
    out = []
    if not (prev and prev.get("engine") == new.get("engine")
            and prev.get("reason") == new.get("reason")):
        warning = new.get("reason") in FALLBACK_REASONS
        out.append(("Warning" if warning else "Normal",
                    str(new.get("reason") if warning else "Autoscaling"),
                    f"autoscaling by {new.get('engine')} on {new.get('signal')}: "
                    f"{new.get('message')}"))
    wake = new.get("wakeOnRequest") or {}
    before = (prev or {}).get("wakeOnRequest") or {}
    if wake and not wake.get("available") and wake.get("reason") != before.get("reason"):
        out.append(("Warning", str(wake.get("reason")), str(wake.get("message"))))
    return out
