"""Golden files, shared by the rendered-manifest and chart golden suites.

A golden test renders its case and calls ``check(path, text)``: the text must equal the file.
``KUBEMAAS_UPDATE_GOLDEN=1`` rewrites the files instead, and

* is refused when ``CI`` is set (a golden file is a reviewed diff, never something CI rewrites);
* records every file it created, changed or removed: the test session prints the list at the
  end (``pytest_terminal_summary`` in tests/conftest.py), so the diff to review is named;
* removes golden files that no case produces any more (``stale``); without the flag, such a
  file fails the suite's own stale-file test.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest

UPDATE_ENV = "KUBEMAAS_UPDATE_GOLDEN"
# (what happened, path): "created", "changed", "removed"
UPDATED: list[tuple[str, Path]] = []


def updating() -> bool:
    """Whether this run rewrites golden files; fails the test when CI is set as well."""
    if os.environ.get(UPDATE_ENV) != "1":
        return False
    if os.environ.get("CI"):
        pytest.fail(f"{UPDATE_ENV}=1 is refused when CI is set ({os.environ['CI']!r}): golden "
                    "files are rewritten on a workstation and their diff reviewed, never in CI",
                    pytrace=False)
    return True


def check(golden: Path, text: str, what: str) -> None:
    """`text` must equal the golden file (with the update flag: becomes it, and is recorded)."""
    if updating():
        old = golden.read_text() if golden.exists() else None
        if old != text:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
            UPDATED.append(("created" if old is None else "changed", golden))
        return
    assert golden.exists(), f"no golden file {golden}; run with {UPDATE_ENV}=1 and review it"
    assert text == golden.read_text(), (
        f"{what} changed ({golden}); if intended, rerun with {UPDATE_ENV}=1 and review the diff")


def stale(directory: Path, produced: Iterable[Path], pattern: str = "*.yaml") -> list[Path]:
    """Golden files under `directory` that no case produces. With the update flag they are
    removed (and recorded); without it the caller asserts the list is empty."""
    wanted = {p.resolve() for p in produced}
    extra = sorted(p for p in directory.rglob(pattern) if p.resolve() not in wanted)
    if extra and updating():
        for path in extra:
            path.unlink()
            UPDATED.append(("removed", path))
        return []
    return extra


def summary(root: Path) -> list[str]:
    """Lines for the end of an update run: which golden files it created, changed, removed."""
    if os.environ.get(UPDATE_ENV) != "1":
        return []
    if not UPDATED:
        return ["golden files: none changed"]
    lines = [f"golden files updated ({len(UPDATED)}); review the diff:"]
    for event, path in UPDATED:
        try:
            shown = path.resolve().relative_to(root)
        except ValueError:
            shown = path
        lines.append(f"  {event:8} {shown}")
    return lines
