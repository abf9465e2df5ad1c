"""Start the testbed's processes and stop exactly those, by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Process:
    name: str
    pid: int
    log: Path


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a process's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_child(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM a child this process started, wait for it to drain, SIGKILL it if it will not."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# Popen objects of the processes this Python process started: kept so that they
# are reaped (and not garbage-collected while running) when stopped from here.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class ProcessTable:
    """pids/<name>.pid and logs/<name>.log under a state directory."""

    def __init__(self, state: Path) -> None:
        self.pid_dir = state / "pids"
        self.log_dir = state / "logs"

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            # A session of its own: a Ctrl-C in the caller's terminal does not
            # reach it, and `down` stops it explicitly.
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, **(env or {})},
            )
        _CHILDREN[proc.pid] = proc
        _await_exec(proc, argv[0])
        (self.pid_dir / f"{name}.pid").write_text(f"{proc.pid}\n{argv[0]}\n")
        return Process(name, proc.pid, log)

    def running(self) -> list[Process]:
        """The processes we started that are still alive (and still ours)."""
        alive = []
        for pid_file in sorted(self.pid_dir.glob("*.pid")) if self.pid_dir.exists() else []:
            name = pid_file.stem
            pid, exe = _read_pid_file(pid_file)
            if _is_ours(pid, exe):
                alive.append(Process(name, pid, self.log_dir / f"{name}.log"))
        return alive

    def stop(self, name: str, timeout: float = 10.0) -> None:
        pid_file = self.pid_dir / f"{name}.pid"
        if not pid_file.exists():
            return
        pid, exe = _read_pid_file(pid_file)
        if _is_ours(pid, exe):
            _terminate(pid, timeout)
        pid_file.unlink()

    def stop_all(self, order: list[str]) -> None:
        """Stop in the given order (dependents first), then anything else we recorded."""
        known = [p.stem for p in self.pid_dir.glob("*.pid")] if self.pid_dir.exists() else []
        for name in order + sorted(set(known) - set(order)):
            self.stop(name)


def _await_exec(proc: subprocess.Popen[bytes], exe: str, timeout: float = 2.0) -> None:
    """Wait until /proc shows the new program: the kernel sets a process's
    command line a moment after Popen has returned, and until then the
    process would not look like ours."""
    deadline = time.monotonic() + timeout
    while not _is_ours(proc.pid, exe) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def _read_pid_file(path: Path) -> tuple[int, str]:
    pid, exe = path.read_text().split("\n")[:2]
    return int(pid), exe


def _is_ours(pid: int, exe: str) -> bool:
    """True if pid is alive and still runs the binary we started (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return cmdline == exe and state != "Z"


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            _reap(pid)
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _reap(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait()
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(table: ProcessTable, proc: Process, ready: Callable[[], bool], timeout: float,
               error: type[Exception], what: str, not_ready: str = "",
               poll_s: float = 0.5) -> None:
    """Wait until `ready()`; `error` (with the end of its log) when the process exits first or
    after `timeout` seconds (`not_ready` says what was not, default "WHAT was not ready")."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.name not in {p.name for p in table.running()}:
            raise error(f"{what} exited; see {proc.log}:\n{log_tail(proc.log)}")
        if time.monotonic() > deadline:
            raise error(f"{not_ready or what + ' was not ready'} after {timeout:.0f} s; see "
                        f"{proc.log}:\n{log_tail(proc.log)}")
        time.sleep(poll_s)
