"""PURE: what the download pod says. While it runs it prints one JSON line per interval on
stdout — {"event": "progress", "bytesDone", "bytesTotal", "filesDone", "filesTotal",
"rateBytesPerSecond", "etaSeconds"} — which the operator reads through the API server
(`pods/log`, a few tail lines: pods on a node need no route to the API server). When it ends it
writes one JSON report to its termination log, which the kubelet puts into
`status.containerStatuses[].state.terminated.message`: phase Ready or Failed, reason (Stalled,
ChecksumMismatch, DiskFull, ...; null when Ready), message, bytesTotal, files (path, size,
sha256; `filesOmitted` when the 4096-byte cap dropped some) and `shape`, the model's shape
(docs/model-cache.md, the downloader's report)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

MAX_FILES = 200  # files listed in the status; the rest are counted
INT64_MAX = 2**63 - 1  # the status' integers are int64: the API server refuses more
MODEL_KEYS: dict[str, type] = {
    "architecture": str, "parameters": int, "weightBytes": int, "numLayers": int,
    "hiddenSize": int, "numAttentionHeads": int, "numKeyValueHeads": int, "headDim": int,
    "maxPositionEmbeddings": int, "dtype": str, "slidingWindow": int, "slidingWindowLayers": int}


@dataclass(frozen=True)
class Progress:
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    rate: float = 0.0  # bytes per second
    eta: float | None = None  # seconds

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bytesDone": self.bytes_done, "bytesTotal": self.bytes_total,
                               "filesDone": self.files_done, "filesTotal": self.files_total,
                               "rateBytesPerSecond": round(self.rate, 1)}
        if self.eta is not None:
            out["etaSeconds"] = round(self.eta, 1)
        return out


@dataclass(frozen=True)
class Report:
    phase: str  # Ready or Failed
    reason: str
    message: str
    files: tuple[dict[str, Any], ...] = ()
    files_omitted: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    bytes_total: int = 0


class BadNumber(ValueError):
    """A number in the downloader's words that no byte count or duration can be (NaN, inf,
    1e30, negative): JSON admits them, the status' int64 fields do not."""


def _int(value: Any, what: str = "a count") -> int:
    """A count of 0 to int64 (absent or not a number: 0); BadNumber for anything past it."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if not math.isfinite(value) or not 0 <= value <= INT64_MAX:
        raise BadNumber(f"{what} is {value!r}, not a count of 0 to {INT64_MAX}")
    return int(value)


def _num(value: Any) -> float | None:
    """A finite rate or duration of 0 or more (a non-number: None); BadNumber past int64."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value > INT64_MAX:
        raise BadNumber(f"{value!r} is not a rate or a duration")
    return float(value) if value >= 0 else None


def parse_progress_line(line: str) -> Progress | None:
    """One log line -> Progress, or None for anything else (plain log lines, partial lines)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("event") != "progress":
        return None
    try:
        return Progress(bytes_done=_int(doc.get("bytesDone")),
                        bytes_total=_int(doc.get("bytesTotal")),
                        files_done=_int(doc.get("filesDone")),
                        files_total=_int(doc.get("filesTotal")),
                        rate=_num(doc.get("rateBytesPerSecond")) or 0.0,
                        eta=_num(doc.get("etaSeconds")))
    except BadNumber:
        return None  # progress is for show: a line that makes no sense is skipped


def last_progress(log_text: str) -> Progress | None:
    """The newest progress line of a log tail."""
    for line in reversed(log_text.splitlines()):
        found = parse_progress_line(line)
        if found is not None:
            return found
    return None


def model_shape(raw: Any) -> dict[str, Any]:
    """The shape keys the GPU sizing reads, with the right types; anything else is dropped."""
    if not isinstance(raw, dict):
        return {}
    out: dict[str, Any] = {}
    for key, kind in MODEL_KEYS.items():
        value = raw.get(key)
        least = 1 if key.startswith("slidingWindow") else 0  # the CRD's minimum
        if kind is int and isinstance(value, int) and not isinstance(value, bool) and (
                least <= value <= INT64_MAX):
            out[key] = value
        elif kind is str and isinstance(value, str) and value:
            out[key] = value[:128]
    return out


def _files(raw: Any) -> tuple[tuple[dict[str, Any], ...], int]:
    if not isinstance(raw, list):
        return (), 0
    files: list[dict[str, Any]] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            continue
        entry: dict[str, Any] = {"path": item["path"][:512],
                                 "size": _int(item.get("size"), f"files[{len(files)}].size")}
        if isinstance(item.get("sha256"), str):
            entry["sha256"] = item["sha256"][:64]
        files.append(entry)
    return tuple(files[:MAX_FILES]), max(0, len(files) - MAX_FILES)


def parse_report(message: str | None, exit_code: int | None) -> Report | None:
    """The termination message -> Report. None when there is none (the pod was killed, or the
    downloader crashed before writing it): the operator then retries with a new pod. A report
    the kubelet truncated (it keeps 4096 bytes) still counts by the exit code."""
    doc: Any = None
    if message:
        try:
            doc = json.loads(message)
        except ValueError:
            doc = None
    if not isinstance(doc, dict):
        if exit_code == 0:
            return Report(phase="Ready", reason="Ready",
                          message="downloaded (the report could not be read)")
        return None
    try:
        return _report(doc, exit_code)
    except BadNumber as err:  # a report that cannot be true: the copy fails, no retry loop
        return Report(phase="Failed", reason="BadReport", message=(
            f"the download report cannot be read: {err}"[:1024]))


def _report(doc: dict[str, Any], exit_code: int | None) -> Report:
    phase = doc.get("phase")
    if phase not in ("Ready", "Failed"):
        phase = "Ready" if exit_code == 0 else "Failed"
    if exit_code not in (None, 0) and phase == "Ready":
        phase = "Failed"  # the exit code is the truth
    reason = doc.get("reason") if isinstance(doc.get("reason"), str) and doc.get("reason") else (
        "Ready" if phase == "Ready" else "DownloadFailed")
    files, omitted = _files(doc.get("files"))
    omitted += _int(doc.get("filesOmitted"), "filesOmitted")
    total = _int(doc.get("bytesTotal"), "bytesTotal") or min(INT64_MAX,
                                                             sum(f["size"] for f in files))
    shape = doc.get("shape") if isinstance(doc.get("shape"), dict) else doc.get("model")
    return Report(phase=phase, reason=str(reason)[:64],
                  message=_text(doc.get("message"))[:1024], files=files,
                  files_omitted=omitted, model=model_shape(shape), bytes_total=total)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""  # never a Python repr in the status
