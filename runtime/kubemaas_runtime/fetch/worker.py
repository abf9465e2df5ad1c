"""One attempt, in a child process the supervisor can kill: plan, skip what is already verified,
fetch the rest in parallel, write the manifest. Speaks JSON lines on stdout: ``plan``, ``busy``
(a heartbeat while hashing a resumed file), ``file`` (one verified file), ``result``.

    python -m kubemaas_runtime.fetch.worker OPTIONS_JSON PARENT_PID
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from .errors import DOWNLOAD_ERROR, NOT_FOUND, NOT_WRITABLE, FetchError
from .layout import (
    MANIFEST,
    WORK,
    adopt_work,
    append_journal,
    partial_path,
    read_journal,
    write_json_atomic,
)
from .options import Options
from .plan import RemoteFile, select, unique
from .shape import read_shape
from .sources import open_source
from .transfer import NO_SPACE, disk_full, fetch_file, known_sums
from .verify import Hashes, hash_prefix


class Emitter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_beat = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"))
        with self.lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def beat(self) -> None:
        now = time.monotonic()
        if now - self.last_beat > 1.0:
            self.last_beat = now
            self({"event": "busy"})


def log(message: str) -> None:
    print(f"kubemaas-fetch: {message}", file=sys.stderr, flush=True)


def die_with_parent(parent: int) -> None:
    """The kernel kills this process when the supervisor dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(3)


def already_done(dest: Path, spec: RemoteFile, journal: dict[str, dict[str, Any]],
                 beat: Any) -> dict[str, Any] | None:
    final = dest / spec.path
    if not final.is_file() or partial_path(dest, spec.path).exists():
        return None
    size = final.stat().st_size
    if spec.size is not None and size != spec.size:
        return None
    rec = journal.get(spec.path)
    wanted = {"sha256": spec.sha256, **known_sums(spec)}
    if rec and rec.get("size") == size and all(
            want is None or str(rec.get(key, "")).lower() == want.lower()
            for key, want in wanted.items()):
        return rec  # every sum the listing gives matches the journal's
    if spec.sha256 or spec.md5 or spec.git_sha1:  # renamed but not journaled before a kill
        hashes = Hashes(spec)
        hash_prefix(final, hashes, size, beat)
        try:
            return {"path": spec.path, "size": size, "sha256": hashes.check(),
                    **known_sums(spec)}
        except FetchError:
            return None
    return None


def check_space(dest: Path, todo: list[RemoteFile]) -> None:
    needed = 0
    for spec in todo:
        part = partial_path(dest, spec.path)
        needed += max((spec.size or 0) - (part.stat().st_size if part.exists() else 0), 0)
    if needed > shutil.disk_usage(dest).free:
        raise disk_full(dest, needed, "before the download")


def fetch_all(opts: Options, emit: Emitter) -> None:
    dest = Path(opts.dest)
    dest.mkdir(parents=True, exist_ok=True)
    source = open_source(opts, emit.beat)
    revision, listed = source.plan()
    files = unique(select(listed, opts.include, opts.exclude), opts.source)
    if not files:
        raise FetchError(NOT_FOUND, f"no file of {opts.source} matches the include/exclude "
                         f"patterns ({len(listed)} files listed)")
    emit({"event": "plan", "revision": revision,
          "files": [{"path": f.path, "size": f.size} for f in files]})
    if adopt_work(dest, opts.source, revision):
        log(f"{dest} held partial files of another source or revision: discarded")
    journal = read_journal(dest)
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for spec in files:
        rec = already_done(dest, spec, journal, emit.beat)
        if rec is None:
            todo.append(spec)
        else:
            records[spec.path] = rec
    check_space(dest, todo)
    cancel = threading.Event()
    first: BaseException | None = None
    with ThreadPoolExecutor(max(1, opts.parallel)) as pool:
        futures = [pool.submit(fetch_file, source, spec, dest, cancel, emit.beat)
                   for spec in todo]
        for fut in as_completed(futures):
            try:
                rec = fut.result()
            except BaseException as exc:
                if first is None or (isinstance(first, FetchError) and "cancelled" in
                                     first.message):
                    first = exc
                cancel.set()
                continue
            append_journal(dest, rec)
            records[str(rec["path"])] = rec
            emit({"event": "file", **rec})
    if first is not None:
        raise first
    ordered = [records[f.path] for f in files]
    manifest = {"source": opts.source, "requestedRevision": opts.revision, "revision": revision,
                "include": list(opts.include), "exclude": list(opts.exclude),
                "bytesTotal": sum(int(r["size"]) for r in ordered), "files": ordered,
                "shape": read_shape(dest, [f.path for f in files])}
    write_json_atomic(dest / MANIFEST, manifest)
    shutil.rmtree(dest / WORK, ignore_errors=True)


def main(argv: list[str]) -> int:
    opts = Options.from_json(argv[1])
    die_with_parent(int(argv[2]))
    emit = Emitter()
    try:
        fetch_all(opts, emit)
    except FetchError as exc:
        emit({"event": "result", "ok": False, **exc.to_json()})
        return 1
    except OSError as exc:
        if exc.errno in NO_SPACE:
            where = f" writing {exc.filename}" if exc.filename else ""
            err = disk_full(Path(opts.dest), None, f"{exc.strerror}{where}")
            emit({"event": "result", "ok": False, **err.to_json()})
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            emit({"event": "result", "ok": False, "reason": NOT_WRITABLE,
                  "message": f"cannot write into {opts.dest}: {exc}"})
        else:
            emit({"event": "result", "ok": False, "reason": DOWNLOAD_ERROR,
                  "message": f"{type(exc).__name__}: {exc}"})
        return 1
    except Exception as exc:
        emit({"event": "result", "ok": False, "reason": DOWNLOAD_ERROR,
              "message": f"{type(exc).__name__}: {exc}"})
        return 1
    emit({"event": "result", "ok": True})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
