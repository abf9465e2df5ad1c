"""What a source holds: the files to fetch (relative paths, sizes, known checksums), the source's
resolved revision, and the include/exclude filters (fnmatch on the relative path, as
huggingface_hub's allow/ignore patterns: a pattern ending in ``/`` matches everything below)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from .errors import INVALID_SOURCE, FetchError


@dataclass(frozen=True)
class RemoteFile:
    path: str                      # relative POSIX path under the destination
    size: int | None               # None: the server will say (Content-Length)
    sha256: str | None = None      # from the index, S3 metadata or the Hub's LFS pointer
    md5: str | None = None         # an S3 single-part ETag
    git_sha1: str | None = None    # the Hub's git blob id of a non-LFS file
    etag: str | None = None        # the S3 listing's ETag: which version of the object
    locator: str = ""              # URL or object key


@dataclass(frozen=True)
class Plan:
    source: str
    revision: str | None
    files: tuple[RemoteFile, ...] = field(default_factory=tuple)

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)


NAME_MAX = 255        # bytes in one path component (Linux, most file systems)
PART_SUFFIX = ".part"  # the partial file's name is the longest we write
REL_MAX = 3072        # bytes in a relative path: DIR and .kubemaas-fetch/partial/ fit in 4096


def path_problem(path: str) -> str | None:
    """Why a listed path cannot be a file under DIR, or None. Beyond escaping DIR (absolute,
    ``..``) and hidden names (ours start with ``.``), names the file system would refuse with a
    traceback (a NUL, a component too long for NAME_MAX with ``.part`` added) and control
    characters (a terminal escape in a log) are refused here, as one clear InvalidSource."""
    rel = PurePosixPath(path)
    if not path or str(rel) == "." or rel.is_absolute() or ".." in rel.parts:
        return "it is empty, absolute or leaves the directory"
    if any(p.startswith(".") for p in rel.parts):
        return "hidden names are not fetched"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "it holds a control character"
    try:
        encoded = [p.encode() for p in rel.parts]
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if any(len(p) > NAME_MAX for p in encoded[:-1]) or \
            len(encoded[-1]) + len(PART_SUFFIX) > NAME_MAX:
        return f"a name is longer than {NAME_MAX - len(PART_SUFFIX)} bytes"
    if len(str(rel).encode()) > REL_MAX:
        return f"it is longer than {REL_MAX} bytes"
    return None


def safe_rel(path: str, where: str) -> str:
    problem = path_problem(path)
    if problem is not None:
        raise FetchError(INVALID_SOURCE, f"unsafe file path {path[:300]!r} in the listing of "
                         f"{where}: {problem}")
    return str(PurePosixPath(path))


def _norm(pattern: str) -> str:
    return pattern + "*" if pattern.endswith("/") else pattern


def selected(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(fnmatch.fnmatch(path, _norm(p)) for p in include):
        return False
    return not any(fnmatch.fnmatch(path, _norm(p)) for p in exclude)


def select(files: Iterable[RemoteFile], include: Sequence[str],
           exclude: Sequence[str]) -> tuple[RemoteFile, ...]:
    return tuple(f for f in files if selected(f.path, include, exclude))


def unique(files: Iterable[RemoteFile], where: str) -> tuple[RemoteFile, ...]:
    """Each path once. Listings can name one path twice (``x`` and ``./x`` normalise alike; S3
    keys ``m/x`` and ``m/x/`` both come back as ``m/x``), and two threads writing one file
    corrupt it: an entry that repeats another exactly is dropped, one that differs is refused,
    as is a path that is both a file and a folder (``a`` and ``a/b``)."""
    seen: dict[str, RemoteFile] = {}
    for f in files:
        other = seen.setdefault(f.path, f)
        if other != f:
            raise FetchError(INVALID_SOURCE, f"duplicate path {f.path!r} in the listing of "
                             f"{where} ({other.locator} and {f.locator})")
    problem = file_and_folder(seen)
    if problem is not None:
        raise FetchError(INVALID_SOURCE, f"{problem} in the listing of {where}")
    return tuple(seen.values())


def file_and_folder(paths: Iterable[str]) -> str | None:
    """``a`` and ``a/b`` cannot both be written: what says so, or None."""
    files = set(paths)
    for path in files:
        for parent in PurePosixPath(path).parents:
            if str(parent) in files:
                return f"{str(parent)!r} is both a file and a folder"
    return None
