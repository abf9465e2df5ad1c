"""Cached side virtualenvs, built with pip once and used only when complete: the peers and tools
of the benchmarks (bench/llm/envs.py, bench/runtime/venvs.py) and the tests' tools whose pins
clash with ours (tests/runtime/venvs.py). Each caller keeps its own cache directory, requirement
lists and timeouts; this module builds.

A venv lives in <cache>/<name>-<hash of its key and the Python version>. It is built under a lock
(<cache>/<name>.lock: two processes never build the same one), from scratch (a half-built one is
removed first), and is used only once its marker file exists, which is written last.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MARKER = ".kubemaas-ready"
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
    """The venv `name` in `cache`, keyed by `key` (what it installs; the marker records it)."""

    cache: Path
    name: str
    key: str

    @property
    def root(self) -> Path:
        digest = hashlib.sha256((self.key + sys.version).encode()).hexdigest()[:12]
        return self.cache / f"{self.name}-{digest}"

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
        return self.python

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
