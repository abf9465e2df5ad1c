"""One fetch at a time per destination. Two writers appending to the same ``.part`` file each
hash only their own stream, so both verify, and one renames a file the other is still writing:
a Ready manifest over a corrupt file. Pods that share a PVC (a Deployment's replicas, an edited
source's new pods) start their fetches together, so the supervisor holds an exclusive ``flock``
on ``DIR/.kubemaas-fetch.lock`` for its whole run; a second fetch waits for the first, then finds
the directory complete (or resumes what the first left). The lock file is never deleted: a
deleted-and-recreated lock file is a new inode that a third fetch could lock beside the first.
The kernel releases the lock when the holder dies, even by SIGKILL; NFS v4 maps flock to
byte-range locks, so it holds across nodes too."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

LOCK = ".kubemaas-fetch.lock"


class DestLock:
    def __init__(self, dest: Path) -> None:
        self.path = dest / LOCK
        self.fd: int | None = None

    def acquire(self, log: Callable[[str], None]) -> None:
        """Blocks while another fetch holds it. OSError: DIR cannot be written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC: the worker does not inherit it, so the lock dies with the supervisor
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another fetch is writing into {self.path.parent} (it holds {LOCK}); "
                "waiting for it to finish")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            log("the other fetch finished; going on")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None
