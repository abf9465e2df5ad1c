"""PURE: the ModelCache's pods (and what their logs said) -> its status, and what to do next.

State lives in the cluster, not in the operator's memory: one download pod per copy and attempt
(restartPolicy Never; the next attempt is a new pod), its progress lines (read through the API
server) and its termination report. A restarted operator computes the same status from them and
carries on. A copy is:

- Ready: its newest download pod Succeeded (report phase Ready), or the status says Ready for the
  same spec and no pod says otherwise (pods can be removed);
- Failed: its report says Failed (Stalled, ChecksumMismatch, DiskFull, ...: the downloader's own
  retries are spent, so more pods would fail the same way), or the downloads ended without a
  report more often than `retries` allows (reason DownloadFailed);
- Downloading: a download pod runs (or waits to run); a pod that ended without a report (killed,
  evicted, out of memory) is followed by the next attempt after a backoff of 10 s, 20 s, 40 s ...
  (at most 5 min), counted from when it ended;
- Evicted: an evict pod removed this node's copy (node storage; the least recently used copy
  made room for another cache);
- Pending: nothing yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..timestamps import format_time, parse_time
from .api import CacheSpec
from .progress import MODEL_KEYS, Progress, Report, parse_report
from .render import CacheRef, claim_name, download_pod, node_dir, spec_hash, target_id

BACKOFF_S, BACKOFF_MAX_S = 10.0, 300.0
LAST_USED_STEP = timedelta(seconds=60)  # lastUsed is rewritten at most once a minute


@dataclass(frozen=True)
class CachePod:
    """What the operator needs of one of a ModelCache's pods (from the pod index)."""

    name: str
    role: str  # fetch, clean, evict
    target: str  # "pvc" or the node's hash
    node: str | None  # the node a node-storage pod is bound to
    spec_hash: str
    attempt: int
    phase: str  # Pending, Running, Succeeded, Failed
    exit_code: int | None = None
    message: str | None = None
    finished_at: datetime | None = None
    deleting: bool = False
    key: str = ""  # an optimize pod's option set (modelcache/optimize.py)
    waiting: str = ""  # a Pending pod: why it does not run (unschedulable, image pull, ...)


_STARTING = ("ContainerCreating", "PodInitializing")


def pod_waiting(status: Mapping[str, Any]) -> str:
    """Why a Pending pod does not run, as `reason: message`: a container waiting for a reason
    other than being created (ErrImagePull, ImagePullBackOff, CreateContainerConfigError: a
    missing Secret), or the scheduler's (Unschedulable: an unbound claim, no node); "" if
    neither says."""
    if status.get("phase") not in (None, "Pending"):
        return ""
    for c in status.get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in _STARTING:
            return _said(str(waiting["reason"]), waiting.get("message"))
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return _said(str(cond.get("reason") or "Unschedulable"), cond.get("message"))
    return ""


def _said(reason: str, message: Any) -> str:
    return f"{reason}: {message}" if message else reason


@dataclass
class Decision:
    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # pod names
    read_logs: list[str] = field(default_factory=list)  # running download pods
    requeue_after: float | None = None


@dataclass(frozen=True)
class Copy:
    """One copy's state: the claim (node None) or one node's directory."""

    node: str | None
    phase: str
    reason: str
    message: str
    progress: Progress | None = None
    report: Report | None = None
    last_used: str | None = None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (
        f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")




def _previous_copy(previous: Mapping[str, Any], node: str | None) -> Mapping[str, Any]:
    if node is None:
        return previous
    return next((n for n in previous.get("nodes") or [] if n.get("name") == node), {})


def _last_used(prev: Mapping[str, Any], in_use: bool, now: datetime) -> str | None:
    before = prev.get("lastUsed")
    if not in_use:
        return before if isinstance(before, str) else None
    seen = parse_time(before)
    return format_time(now) if seen is None or now - seen >= LAST_USED_STEP else str(before)


def copy_state(ref: CacheRef, spec: CacheSpec, node: str | None, pods: Sequence[CachePod],
               progress: Mapping[str, Progress], previous: Mapping[str, Any], in_use: bool,
               now: datetime, out: Decision, respec: bool = False) -> Copy:
    """One copy: its state, and the pods to create or delete (into `out`). `respec`: the
    spec changed since the last status; a failed copy is tried again (a fix to `download`,
    which the spec hash leaves out, is otherwise never tried)."""
    tid, current = target_id(node), spec_hash(spec)
    prev = _previous_copy(previous, node)
    used = _last_used(prev, in_use, now)
    mine = [p for p in pods if p.target == tid]
    for p in mine:  # pods of an older spec: their files are rewritten by the new download
        if p.spec_hash != current and not p.deleting:
            out.delete.append(p.name)
    going = {p.name for p in mine if p.spec_hash != current or p.deleting}
    mine = [p for p in mine if p.spec_hash == current and not p.deleting]
    if any(p.role == "evict" for p in mine):
        return Copy(node, "Evicted", "Evicted", "removed to make room for another cache on "
                    "this node (least recently used)", last_used=used)
    fetches = sorted((p for p in mine if p.role == "fetch"), key=lambda p: p.attempt)
    newest = fetches[-1] if fetches else None
    same_spec = previous.get("specHash") == current
    if respec and prev.get("phase") == "Failed" and (newest is None or newest.phase in (
            "Succeeded", "Failed")):
        attempt = 1 if newest is None else newest.attempt + 1
        if (waiting := _start(ref, spec, node, attempt, going, out, used)) is not None:
            return waiting
        return Copy(node, "Downloading", "Retrying", f"attempt {attempt} started: the spec "
                    "changed since the copy failed", last_used=used)
    if newest is None:
        if same_spec and prev.get("phase") in ("Ready", "Failed"):  # its pods were removed
            return Copy(node, str(prev["phase"]), str(prev.get("reason") or prev["phase"]),
                        str(prev.get("message") or ""), last_used=used)
        if (waiting := _start(ref, spec, node, 1, going, out, used)) is not None:
            return waiting
        return Copy(node, "Pending", "Starting", "download pod created", last_used=used)
    if newest.phase in ("Pending", "Running"):
        seen = progress.get(newest.name)
        if seen is None and same_spec and prev.get("bytesTotal"):
            seen = Progress(bytes_done=int(prev.get("bytesDone") or 0),
                            bytes_total=int(prev.get("bytesTotal") or 0))
        return _downloading(spec, node, newest, seen, out, used)
    report = parse_report(newest.message, newest.exit_code)
    if newest.phase == "Succeeded" and report is not None and report.phase == "Ready":
        if spec.size_limit is not None and report.bytes_total > spec.size_limit:
            # finished between two progress reads (or with no log to read): the same rule
            return Copy(node, "Failed", "DiskFull", f"the model is {report.bytes_total} bytes, "
                        f"more than spec.sizeLimit ({spec.size_limit})", report=report,
                        last_used=used)
        return Copy(node, "Ready", "Ready", report.message or "downloaded and verified",
                    report=report, last_used=used)
    if report is not None:  # the downloader gave up and said why
        return Copy(node, "Failed", report.reason, report.message or report.reason,
                    report=report, last_used=used)
    return _unreported(ref, spec, node, newest, now, out, used)


def _start(ref: CacheRef, spec: CacheSpec, node: str | None, attempt: int, going: set[str],
           out: Decision, used: str | None) -> Copy | None:
    """Create download pod `attempt`, or, while a pod of that name (an older spec's, or one
    being deleted) is still there, wait for it to go: an apply would patch that pod, and the
    API server refuses to change a pod's spec (the copy used to fail, PodRejected)."""
    pod = download_pod(ref, spec, node, attempt)
    name = pod["metadata"]["name"]
    if name not in going:
        out.create.append(pod)
        return None
    out.requeue_after = min(out.requeue_after or 1.0, 1.0)
    return Copy(node, "Pending", "Starting", f"waiting for the pod {name} of the previous "
                "spec to be deleted before its successor of that name is created",
                last_used=used)


def _downloading(spec: CacheSpec, node: str | None, newest: CachePod, seen: Progress | None,
                 out: Decision, used: str | None) -> Copy:
    """A download pod pending or running: its progress, or DiskFull past spec.sizeLimit."""
    if newest.phase == "Running":
        out.read_logs.append(newest.name)
    if seen is not None and spec.size_limit is not None and seen.bytes_total > spec.size_limit:
        out.delete.append(newest.name)
        return Copy(node, "Failed", "DiskFull", f"the model is {seen.bytes_total} bytes, "
                    f"more than spec.sizeLimit ({spec.size_limit})", seen, last_used=used)
    what = f"attempt {newest.attempt}, pod {newest.name}"
    if newest.phase != "Running" and newest.waiting:
        return Copy(node, "Downloading", "PodPending", f"{what} cannot start: {newest.waiting}",
                    seen, last_used=used)
    what += "" if newest.phase == "Running" else " (not running yet)"
    return Copy(node, "Downloading", "Downloading", what, seen, last_used=used)


def _unreported(ref: CacheRef, spec: CacheSpec, node: str | None, newest: CachePod,
                now: datetime, out: Decision, used: str | None) -> Copy:
    """A download pod that ended without a report: another attempt after a backoff, or
    Failed once spec.download.retries are spent."""
    if newest.attempt > spec.download.retries:
        return Copy(node, "Failed", "DownloadFailed", f"{newest.attempt} download pods ended "
                    f"without a report (the last, {newest.name}, exit code {newest.exit_code}); "
                    "see its events and log", last_used=used)
    wait = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (newest.attempt - 1))
    due = (newest.finished_at or now) + timedelta(seconds=wait)
    if now >= due:
        out.create.append(download_pod(ref, spec, node, newest.attempt + 1))
        return Copy(node, "Downloading", "Retrying", f"attempt {newest.attempt + 1} started "
                    f"after {newest.name} ended without a report", last_used=used)
    left = (due - now).total_seconds()
    out.requeue_after = min(out.requeue_after or left, left)
    return Copy(node, "Downloading", "Retrying", f"{newest.name} ended without a report (exit "
                f"code {newest.exit_code}); attempt {newest.attempt + 1} in {left:.0f}s",
                last_used=used)


def _aggregate(copies: Sequence[Copy]) -> tuple[str, str, str]:
    """(phase, reason, message) of the whole cache."""
    failed = [c for c in copies if c.phase == "Failed"]
    if failed:
        c = failed[0]
        where = f" on {c.node}" if c.node else ""
        return "Failed", c.reason, f"{c.message}{where}"
    if copies and all(c.phase == "Ready" for c in copies):
        return "Ready", "Ready", (copies[0].message if len(copies) == 1
                                  else f"{len(copies)} nodes hold a verified copy")
    active = [c for c in copies if c.phase in ("Downloading", "Pending")]
    if active:
        ready = sum(1 for c in copies if c.phase == "Ready")
        c = active[0]
        where = f"{c.node}: " if c.node else ""
        more = f" ({ready}/{len(copies)} nodes ready)" if copies[0].node is not None else ""
        return ("Downloading" if any(a.phase == "Downloading" for a in active) else "Pending",
                c.reason, f"{where}{c.message}{more}")
    if not copies:
        return "Pending", "NoNodes", "no node matches spec.storage.node (nodeSelector, nodes)"
    return "Pending", "Evicted", "every copy was evicted"


def _shape(copies: Sequence[Copy]) -> tuple[Report | None, dict[str, Any]]:
    report = next((c.report for c in copies if c.report is not None and c.phase == "Ready"), None)
    model = {k: v for k, v in (report.model if report else {}).items() if k in MODEL_KEYS}
    return report, model


def cache_status(ref: CacheRef, spec: CacheSpec, generation: int, copies: Sequence[Copy],
                 previous: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    phase, reason, message = _aggregate(copies)
    report, model = _shape(copies)
    status: dict[str, Any] = {"phase": phase, "reason": reason, "message": message[:2048],
                              "observedGeneration": generation, "specHash": spec_hash(spec)}
    done = total = files_done = files_total = 0
    rate, eta = 0.0, None
    for c in copies:
        if c.progress is not None:
            p = c.progress
            done, total = done + p.bytes_done, total + p.bytes_total
            files_done, files_total = files_done + p.files_done, files_total + p.files_total
            rate += p.rate
            if p.eta is not None:
                eta = max(eta or 0.0, p.eta)
        elif c.phase == "Ready" and report is not None:
            done, total = done + report.bytes_total, total + report.bytes_total
            files_done += len(report.files) + report.files_omitted
            files_total += len(report.files) + report.files_omitted
    if report is None and same_total(previous, spec) and phase == "Ready":
        for key in ("files", "filesOmitted", "model"):  # pods gone: keep what they reported
            if previous.get(key) is not None:
                status[key] = previous[key]
        model = dict(previous.get("model") or {})
    size = report.bytes_total if report is not None else (
        int(previous.get("bytesTotal") or 0) // max(1, len(copies)) if phase == "Ready"
        and same_total(previous, spec) else (total // max(1, len(copies)) if total else 0))
    if phase == "Ready" and not total and size:
        done = total = size * len(copies)
    status.update({"bytesDone": done, "bytesTotal": total, "filesDone": files_done,
                   "filesTotal": files_total})
    if phase == "Downloading":
        status["rateBytesPerSecond"] = round(rate, 1)
        if eta is not None:
            status["etaSeconds"] = round(eta, 1)
            status["eta"] = _duration(eta)
    if total:
        status["progress"] = f"{_human(done)}/{_human(total)} ({100 * done // total}%)"
    if size:
        status["size"] = _human(size)
    if report is not None:
        status["files"] = list(report.files)
        if report.files_omitted:
            status["filesOmitted"] = report.files_omitted
    if model:
        status["model"] = model
    if spec.storage.type == "pvc":
        status["claimName"] = claim_name(ref, spec)
        status["path"] = (spec.storage.pvc.sub_path if spec.storage.pvc is not None
                          and spec.storage.pvc.sub_path else ref.name)
        if copies and copies[0].last_used:
            status["lastUsed"] = copies[0].last_used
    else:
        status["path"] = node_dir(ref, spec)
        status["nodes"] = [_node_entry(c) for c in copies]
    status["conditions"] = [_ready_condition(previous, phase, reason, message, generation, now)]
    return status


def same_total(previous: Mapping[str, Any], spec: CacheSpec) -> bool:
    return previous.get("specHash") == spec_hash(spec)


def _node_entry(c: Copy) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": c.node, "phase": c.phase, "reason": c.reason,
                             "message": c.message[:512]}
    if c.progress is not None:
        entry.update(bytesDone=c.progress.bytes_done, bytesTotal=c.progress.bytes_total)
    elif c.report is not None:
        entry.update(bytesDone=c.report.bytes_total, bytesTotal=c.report.bytes_total)
    if c.last_used:
        entry["lastUsed"] = c.last_used
    return entry


def _ready_condition(previous: Mapping[str, Any], phase: str, reason: str, message: str,
                     generation: int, now: datetime) -> dict[str, Any]:
    state = "True" if phase == "Ready" else "False"
    before: Mapping[str, Any] = next(
        (c for c in previous.get("conditions") or [] if c.get("type") == "Ready"), {})
    since = before.get("lastTransitionTime") if before.get("status") == state else None
    return {"type": "Ready", "status": state, "reason": reason, "message": message[:1024],
            "observedGeneration": generation, "lastTransitionTime": since or format_time(now)}


def ready_nodes(status: Mapping[str, Any]) -> list[str]:
    """node storage: the nodes whose copy is Ready."""
    return sorted(str(n["name"]) for n in status.get("nodes") or []
                  if n.get("phase") == "Ready" and n.get("name"))
