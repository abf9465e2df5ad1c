"""Progress as the operator reads it: one JSON line per interval on stdout.

``{"event": "progress", "bytesDone", "bytesTotal", "filesDone", "filesTotal",
"rateBytesPerSecond", "etaSeconds"}``. The rate is over a sliding window (default 10 s), so a
resumed download does not count the bytes it found on disk as speed."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from .layout import partial_path
from .plan import RemoteFile


class RateMeter:
    def __init__(self, window_s: float = 10.0) -> None:
        self.window = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, done: int) -> None:
        self.samples.append((t, done))
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return max(b1 - b0, 0) / (t1 - t0) if t1 > t0 else 0.0


def eta(done: int, total: int, rate: float) -> float | None:
    if done >= total:
        return 0.0
    return round((total - done) / rate, 1) if rate > 0 else None


def progress_event(done: int, total: int, files_done: int, files_total: int,
                   rate: float) -> dict[str, Any]:
    return {"event": "progress", "bytesDone": done, "bytesTotal": total,
            "filesDone": files_done, "filesTotal": files_total,
            "rateBytesPerSecond": round(rate), "etaSeconds": eta(done, total, rate)}


def bytes_on_disk(dest: Path, files: tuple[RemoteFile, ...]) -> tuple[int, int]:
    """(bytes done, files done): complete files at their final name count whole, a partial file
    by its size. Read from the disk, so it sees every source the same way."""
    done = files_done = 0
    for spec in files:
        final = dest / spec.path
        try:
            part = partial_path(dest, spec.path).stat().st_size
        except (OSError, ValueError):  # not there (or a name the worker will refuse itself)
            part = None
        try:
            whole = final.stat().st_size if part is None and final.is_file() else None
        except (OSError, ValueError):
            whole = None
        if whole is not None:
            done += whole
            files_done += 1
        elif part is not None:
            done += min(part, spec.size) if spec.size is not None else part
    return done, files_done
