"""Attempts, watchdog, retries and the report.

Each attempt is a child process (``worker``) so that a library blocked on a socket can always be
stopped: when neither the bytes on disk grew by MIN_PROGRESS nor the worker sent a heartbeat for
``stall_timeout``, the worker is killed and the attempt fails with ``Stalled``. Transient failures
(Stalled, DownloadError) are retried ``retries`` times with exponential backoff; the partial files
stay, so the next attempt resumes. Progress is read from the disk and printed as JSON lines."""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from .errors import DOWNLOAD_ERROR, STALLED, FetchError
from .layout import MANIFEST, read_manifest
from .lock import DestLock
from .options import Options
from .plan import RemoteFile
from .progress import RateMeter, bytes_on_disk, progress_event
from .report import capped, dumps, failed_report, ready_report

# progress is this many more bytes on disk (or a file finished) within --stall-timeout: a body
# that trickles a byte at a time never stalls a socket's read timeout, nor a watchdog that
# counts any byte, and would hold the pod for ever
MIN_PROGRESS = 64 << 10


def log(message: str) -> None:
    print(f"kubemaas-fetch: {message}", file=sys.stderr, flush=True)


def complete(opts: Options) -> dict[str, Any] | None:
    """The manifest when DIR already holds this source's files, all of them, at their size."""
    m = read_manifest(Path(opts.dest))
    if m is None or m.get("source") != opts.source or \
            m.get("requestedRevision") != opts.revision or \
            m.get("include") != list(opts.include) or m.get("exclude") != list(opts.exclude):
        return None
    for f in m.get("files", []):
        path = Path(opts.dest, f["path"])
        if not path.is_file() or path.stat().st_size != f["size"]:
            return None
    return m


def _reader(stream: IO[bytes], q: queue.Queue[dict[str, Any] | None]) -> None:
    for raw in stream:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict):
            q.put(event)
    q.put(None)


class Attempt:
    def __init__(self, opts: Options, out: IO[str]) -> None:
        self.opts = opts
        self.out = out
        self.files: tuple[RemoteFile, ...] = ()
        self.revision: str | None = None
        self.meter = RateMeter()

    def emit_progress(self, now: float) -> None:
        done, files_done = bytes_on_disk(Path(self.opts.dest), self.files)
        total = sum(f.size or 0 for f in self.files)
        self.meter.add(now, done)
        ev = progress_event(done, total, files_done, len(self.files), self.meter.rate())
        self.out.write(dumps(ev) + "\n")
        self.out.flush()

    def run(self) -> FetchError | None:
        env = {**os.environ, "HF_HUB_DOWNLOAD_TIMEOUT": str(math.ceil(self.opts.stall_timeout)),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubemaas_runtime.fetch.worker", self.opts.to_json(),
             str(os.getpid())], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None
        q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        reader = threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True)
        reader.start()
        try:
            return self._watch(proc, q)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
            reader.join(5)

    def _watch(self, proc: subprocess.Popen[bytes],
               q: queue.Queue[dict[str, Any] | None]) -> FetchError | None:
        opts = self.opts
        now = time.monotonic()
        live, last_bytes, next_progress = now, -1, now
        live_bytes = 0  # bytes on disk when progress was last seen
        tick = min(0.25, opts.progress_interval)
        look = min(1.0, opts.stall_timeout / 4)
        next_look = now
        while True:
            try:
                event = q.get(timeout=tick)
            except queue.Empty:
                event = {}
            now = time.monotonic()
            if event is None:
                rc = proc.wait()
                return FetchError(DOWNLOAD_ERROR, f"the download process exited with code {rc} "
                                  "without a result")
            kind = event.get("event")
            if kind in ("plan", "busy", "file"):
                live, live_bytes = now, max(last_bytes, 0)
            if kind == "plan":
                self.revision = event.get("revision")
                self.files = tuple(RemoteFile(f["path"], f["size"]) for f in event["files"])
            if kind == "result":
                if self.files:
                    self.emit_progress(now)
                return None if event.get("ok") else FetchError(
                    event.get("reason") or DOWNLOAD_ERROR, event.get("message") or "failed",
                    **{k: v for k, v in event.items()
                       if k not in ("event", "ok", "reason", "message")})
            if self.files and (now >= next_progress or now >= next_look):
                # the disk is read at most every `look` seconds (a stat per file)
                done, _ = bytes_on_disk(Path(opts.dest), self.files)
                last_bytes = done
                if done - live_bytes >= MIN_PROGRESS or done < live_bytes:  # < : a restart
                    live, live_bytes = now, done
                next_look = now + look
                if now >= next_progress:
                    self.emit_progress(now)
                    next_progress = now + opts.progress_interval
            if now - live > opts.stall_timeout:
                proc.kill()
                return FetchError(STALLED, f"less than {MIN_PROGRESS // 1024} KiB in "
                                  f"{opts.stall_timeout:g} s ({max(last_bytes, 0)} bytes on disk)",
                                  stallTimeoutSeconds=opts.stall_timeout)


def finish(opts: Options, report: dict[str, Any], out: IO[str]) -> None:
    out.write(dumps(report) + "\n")
    out.flush()
    if opts.termination_log:
        try:
            Path(opts.termination_log).write_text(capped(report))
        except OSError as exc:
            log(f"cannot write the termination log {opts.termination_log}: {exc}")


def run(opts: Options, out: IO[str] = sys.stdout) -> int:
    lock = DestLock(Path(opts.dest))
    try:
        lock.acquire(log)
    except OSError as exc:
        # a read-only DIR: this fetch cannot write either, so it cannot corrupt; it is Ready if
        # DIR is complete, else its attempt fails NotWritable
        log(f"cannot lock {lock.path}: {exc}")
    try:
        return _run(opts, out)
    finally:
        lock.release()


def _run(opts: Options, out: IO[str]) -> int:
    start = time.monotonic()
    manifest = complete(opts)
    if manifest is not None:
        n, total = len(manifest.get("files", [])), int(manifest.get("bytesTotal") or 0)
        log(f"{opts.dest} already complete: {n} files, {total} bytes from {opts.source}")
        out.write(dumps(progress_event(total, total, n, n, 0.0)) + "\n")
        finish(opts, ready_report(manifest, "already complete", attempts=0,
                                  durationSeconds=0.0), out)
        return 0
    stale = Path(opts.dest, MANIFEST)
    if stale.is_file():  # another source, revision or set of files: no longer complete
        log(f"{opts.dest} holds another fetch's manifest; fetching {opts.source} again")
        stale.unlink()
    attempt = 0
    while True:
        attempt += 1
        err = Attempt(opts, out).run()
        elapsed = round(time.monotonic() - start, 3)
        if err is None:
            manifest = read_manifest(Path(opts.dest)) or {}
            total = int(manifest.get("bytesTotal") or 0)
            msg = (f"fetched {len(manifest.get('files', []))} files, {total} bytes in "
                   f"{elapsed:g} s")
            log(msg)
            finish(opts, ready_report(manifest, msg, attempts=attempt,
                                      durationSeconds=elapsed), out)
            return 0
        log(f"attempt {attempt} failed: {err.reason}: {err.message}")
        if not err.transient or attempt > opts.retries:
            finish(opts, failed_report(opts.source, err.reason, err.message, attempts=attempt,
                                       durationSeconds=elapsed, **err.details), out)
            return 1
        wait = min(opts.backoff * 2 ** (attempt - 1), 60.0)
        log(f"retrying in {wait:g} s ({opts.retries - attempt + 1} retries left)")
        time.sleep(wait)
