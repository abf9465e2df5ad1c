"""``python -m kubemaas_runtime.fetch --source URI --dest DIR …`` (see options.py)."""

from __future__ import annotations

import signal
import sys

from .options import parse_args
from .supervisor import run


def _terminate(signum: int, frame: object) -> None:
    # as PID 1 in a container, SIGTERM has no default action: leave now; the attempt's cleanup
    # kills the worker, and the partial files stay for the next pod to resume
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    return run(opts)


if __name__ == "__main__":
    sys.exit(main())
