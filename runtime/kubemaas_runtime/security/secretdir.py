"""Reading a mounted Kubernetes Secret directory and noticing when it changes.

The kubelet writes a Secret volume as ``..2026_11_30_15_00_00.123/`` holding the files, a
``..data`` symlink to it, and one symlink per key (``name -> ..data/name``). An update writes a
new timestamped directory and swaps ``..data`` atomically, so a reader that follows the symlinks
sees either the old set or the new set, never a mix. Entries whose names start with a dot are the
kubelet's own and are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

Signature = tuple[object, ...]
T = TypeVar("T")


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
