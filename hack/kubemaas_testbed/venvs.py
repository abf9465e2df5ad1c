"""Cached side virtualenvs, built with pip once and used only when complete: the peers and tools
of the benchmarks (bench/llm/envs.py, bench/runtime/venvs.py) and the tests' tools whose pins
clash with ours (tests/runtime/venvs.py). Each caller keeps its own cache directory, requirement
lists and timeouts; this module builds.

A venv lives in <cache>/<name>-<hash of its key and the Python version>. It is built under a lock
(<cache>/<name>.lock: two processes never build the same one), from scratch (a half-built one is
removed first), and is used only once its marker file exists, which is written last. Once built,
the venvs of the same name under other keys are deleted: nothing uses them again, and on the disk
CI shares they cost gigabytes.

A venv may see the packages of another site-packages directory after its own (`shared`: a line in
a .pth file), as a venv made with --system-site-packages sees the system's: pip then installs only
what they lack or pin otherwise. The tests' LLM load generator takes torch (5 GB with its CUDA
libraries) from the project's venv this way instead of a copy of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

MARKER = ".kubemaas-ready"
SHARED_PTH = "kubemaas-shared.pth"
# What a failed build raises (the benchmarks report it instead of stopping).
BUILD_ERRORS = (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError)


@dataclass
class VenvResult:
    """A benchmark's venv: its python, or why it could not be built."""

    name: str
    python: Path | None
    error: str | None = None


@dataclass(frozen=True)
class CachedVenv:
    """The venv `name` in `cache`, keyed by `key` (what it installs; the marker records it) and,
    with `shared`, by the distributions installed there (it was resolved against them)."""

    cache: Path
    name: str
    key: str
    shared: Path | None = None

    @cached_property  # (the shared directory is listed once)
    def root(self) -> Path:
        key = self.key + sys.version + self._shared_key()
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return self.cache / f"{self.name}-{digest}"

    def _shared_key(self) -> str:
        if self.shared is None:
            return ""
        dists = sorted(p.name for p in self.shared.glob("*.dist-info"))
        return f"\nshared {self.shared}: " + " ".join(dists)

    @property
    def site_packages(self) -> Path:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "lib" / version / "site-packages"

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def pip_log(self) -> Path:
        """Where `ensure(..., log=True)` writes pip's output."""
        return self.cache / f"{self.root.name}.pip.log"

    def ensure(self, steps: Sequence[Sequence[str]], *, timeout: float,
               pip_args: Sequence[str] = (), log: bool = False,
               echo_steps: bool = False) -> Path:
        """The venv's python, built first if it is not complete: `pip install <pip_args>
        <step>` for each step, each within `timeout` seconds. With `log`, pip's output goes to
        pip_log (and with `echo_steps`, each step's command line before it). A failed build
        raises one of BUILD_ERRORS and leaves no marker."""
        marker = self.root / MARKER
        if marker.is_file():
            return self.python
        self.cache.mkdir(parents=True, exist_ok=True)
        with (self.cache / f"{self.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two processes never build the same venv
            if marker.is_file():
                return self.python
            shutil.rmtree(self.root, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(self.root)], check=True,
                           timeout=120)
            if self.shared is not None:
                (self.site_packages / SHARED_PTH).write_text(f"{self.shared}\n")
            with contextlib.ExitStack() as stack:
                out = stack.enter_context(self.pip_log.open("w")) if log else None
                for step in steps:
                    if out is not None and echo_steps:
                        out.write(f"$ pip install {' '.join(step)}\n")
                        out.flush()
                    subprocess.run([str(self.python), "-m", "pip", "install", *pip_args,
                                    "--disable-pip-version-check", *step], check=True,
                                   timeout=timeout, stdout=out,
                                   stderr=None if out is None else subprocess.STDOUT)
            marker.write_text(self.key)
            self._remove_stale()
        return self.python

    def _remove_stale(self) -> None:
        """Delete this name's venvs under other keys (and their pip logs)."""
        stale = re.compile(re.escape(self.name) + r"-[0-9a-f]{12}(\.pip\.log)?")
        for path in self.cache.iterdir():
            if not stale.fullmatch(path.name) or path.name.startswith(self.root.name):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def pip_log_tail(self, lines: int) -> list[str]:
        """The last lines of pip_log (none when there is no log)."""
        log = self.pip_log
        text = log.read_text(errors="replace") if log.is_file() else ""
        return text.strip().splitlines()[-lines:]


def pip_freeze(python: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Versions of the named distributions inside a venv (for the results file)."""
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze",
                          "--disable-pip-version-check"], capture_output=True, text=True,
                         timeout=120).stdout
    found = {}
    for line in out.splitlines():
        pkg, _, ver = line.partition("==")
        if pkg.lower() in names:
            found[pkg.lower()] = ver
    return found
