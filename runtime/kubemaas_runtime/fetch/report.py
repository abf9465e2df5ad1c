"""The final JSON report: printed in full on stdout, and written to the termination log capped
at 4096 bytes (Kubernetes' limit): files are dropped from the end of the list until it fits, and
``filesOmitted`` says how many (the full list is in the manifest and on stdout)."""

from __future__ import annotations

import json
from typing import Any

LIMIT = 4096


def ready_report(manifest: dict[str, Any], message: str, **extra: Any) -> dict[str, Any]:
    files = [{"path": f["path"], "size": f["size"], "sha256": f["sha256"]}
             for f in manifest.get("files", [])]
    return {"event": "result", "phase": "Ready", "reason": None, "message": message,
            "source": manifest.get("source"), "revision": manifest.get("revision"),
            "bytesTotal": manifest.get("bytesTotal"), "filesTotal": len(files),
            "files": files, "shape": manifest.get("shape"), **extra}


def failed_report(source: str, reason: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"event": "result", "phase": "Failed", "reason": reason, "message": message,
            "source": source, "files": [], "shape": None, **extra}


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, separators=(",", ":"))


def capped(report: dict[str, Any], limit: int = LIMIT) -> str:
    """The report as one JSON document of at most ``limit`` bytes."""
    text = dumps(report)
    if len(text.encode()) <= limit:
        return text
    files = list(report.get("files") or [])
    out = dict(report)
    lo, hi = 0, len(files)  # the most files that fit: binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        out.update(files=files[:mid], filesOmitted=len(files) - mid)
        if len(dumps(out).encode()) <= limit:
            lo = mid
        else:
            hi = mid - 1
    out.update(files=files[:lo], filesOmitted=len(files) - lo)
    text = dumps(out)
    if len(text.encode()) > limit:  # a huge message: cut it
        room = max(len(str(out.get("message", ""))) - (len(text.encode()) - limit) - 16, 0)
        out["message"] = str(out.get("message", ""))[:room] + " …"
        text = dumps(out)
    return text
