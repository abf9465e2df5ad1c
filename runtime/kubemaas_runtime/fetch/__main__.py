"""``python -m kubemaas_runtime.fetch --source URI --dest DIR …`` (see options.py)."""

from __future__ import annotations

import sys

from .options import parse_args
from .supervisor import run


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
