"""Reading a mounted Kubernetes Secret directory and noticing when it changes.

The kubelet writes a Secret volume as ``..2026_11_30_15_00_00.123/`` holding the files, a
``..data`` symlink to it, and one symlink per key (``name -> ..data/name``). An update writes a
new timestamped directory and swaps ``..data`` atomically, so a reader that follows the symlinks
sees either the old set or the new set, never a mix. Entries whose names start with a dot are the
kubelet's own and are skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

Signature = tuple[object, ...]
T = TypeVar("T")

log = logging.getLogger("kubemaas.runtime.security")


def entries(directory: Path) -> list[Path]:
    """The visible entries (the Secret's keys), sorted by name."""
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def signature(directory: Path) -> Signature:
    """A cheap value that changes whenever the directory's content does: the ``..data`` target
    and each visible file's inode, size and modification time (following symlinks). Raises
    OSError when the directory cannot be read."""
    parts: list[object] = []
    data = directory / "..data"
    if data.is_symlink():
        parts.append(os.readlink(data))
    for path in entries(directory):
        try:
            st = path.stat()
        except FileNotFoundError:  # a dangling symlink in the middle of a swap
            parts.append((path.name, None))
            continue
        parts.append((path.name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(parts)


def version_dir(directory: Path) -> Path:
    """The directory holding one whole version of the Secret: the timestamped directory
    ``..data`` points to, or ``directory`` itself when it is not a kubelet volume."""
    data = directory / "..data"
    if data.is_symlink():
        return directory / os.readlink(data)
    return directory


def read_version(directory: Path, read: Callable[[Path], T]) -> T:
    """``read`` one version of the Secret, never half of one and half of the next: its files
    are read in the timestamped directory, not through the per-key links (which the kubelet
    adds and removes after the swap). A version removed while it is read (a swap meanwhile)
    is read again in the new one."""
    for _ in range(3):
        base = version_dir(directory)
        try:
            return read(base)
        except OSError:
            if version_dir(directory) == base:
                raise
    return read(version_dir(directory))


class ReloadedDir:
    """A Secret directory re-read when its files change. A version that does not load is logged
    and counted once (not tried again until the files change again) and the previous one kept.
    The subclass sets ``directory``, ``_sig`` (the loaded version), ``_failed_sig`` and
    ``reloads`` ({"ok": 0, "error": 0}) and calls ``_reload``."""

    directory: Path
    _sig: Signature
    _failed_sig: Signature | None
    reloads: dict[str, int]

    def _reload(self, what: str, kept: str, load: Callable[[], Mapping[str, str] | None],
                errors: tuple[type[Exception], ...]) -> bool:
        """``load`` the directory if it changed (it raises one of ``errors`` when the version
        is bad, else returns the log fields that describe it); True when a new version was
        loaded. ``what`` and ``kept`` name it in the log: "api keys", "the previous keys"."""
        try:
            sig = signature(self.directory)
        except OSError as exc:
            sig = ("unreadable", str(exc))
        if sig == self._sig or sig == self._failed_sig:
            return False
        try:
            fields = load()
        except errors as exc:
            self._failed_sig = sig
            self.reloads["error"] += 1
            log.error(f"{what} not reloaded; keeping {kept}",
                      extra={"fields": {"dir": str(self.directory), "error": str(exc)}})
            return False
        self._sig, self._failed_sig = sig, None
        self.reloads["ok"] += 1
        log.warning(f"{what} reloaded",
                    extra={"fields": {"dir": str(self.directory), **(fields or {})}})
        return True
