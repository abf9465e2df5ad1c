"""The golden-file helper (tests/goldens.py): compare, update outside CI only, report what an
update changed, and catch golden files that no case produces."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests import goldens


@pytest.fixture
def updated(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Path]]]:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(goldens.UPDATE_ENV, raising=False)
    events: list[tuple[str, Path]] = []
    monkeypatch.setattr(goldens, "UPDATED", events)
    yield events


def test_check_compares_without_the_flag(tmp_path: Path, updated: list[object]) -> None:
    golden = tmp_path / "a.yaml"
    with pytest.raises(AssertionError, match="no golden file"):
        goldens.check(golden, "x: 1\n", "case a")
    golden.write_text("x: 1\n")
    goldens.check(golden, "x: 1\n", "case a")
    with pytest.raises(AssertionError, match=r"case a changed"):
        goldens.check(golden, "x: 2\n", "case a")
    assert golden.read_text() == "x: 1\n" and not updated


def test_update_writes_and_reports_only_what_changed(tmp_path: Path, updated: list[object],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(goldens.UPDATE_ENV, "1")
    same, changed, new = tmp_path / "same.yaml", tmp_path / "changed.yaml", tmp_path / "n.yaml"
    same.write_text("a\n")
    changed.write_text("old\n")
    goldens.check(same, "a\n", "same")
    goldens.check(changed, "new\n", "changed")
    goldens.check(new, "n\n", "new")
    assert changed.read_text() == "new\n" and new.read_text() == "n\n"
    assert updated == [("changed", changed), ("created", new)]
    lines = goldens.summary(tmp_path)
    assert lines[0].startswith("golden files updated (2)")
    assert any("changed" in line and "changed.yaml" in line for line in lines)
    assert not any("same.yaml" in line for line in lines)


def test_update_with_nothing_changed_says_so(tmp_path: Path, updated: list[object],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(goldens.UPDATE_ENV, "1")
    golden = tmp_path / "g.yaml"
    golden.write_text("g\n")
    goldens.check(golden, "g\n", "g")
    assert goldens.summary(tmp_path) == ["golden files: none changed"]


def test_update_is_refused_in_ci(tmp_path: Path, updated: list[object],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(goldens.UPDATE_ENV, "1")
    monkeypatch.setenv("CI", "true")
    golden = tmp_path / "g.yaml"
    golden.write_text("old\n")
    with pytest.raises(pytest.fail.Exception, match="refused when CI is set"):
        goldens.check(golden, "new\n", "g")
    assert golden.read_text() == "old\n" and not updated


def test_stale_files_fail_and_the_update_removes_them(tmp_path: Path, updated: list[object],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    kept, gone, nested = tmp_path / "kept.yaml", tmp_path / "gone.yaml", tmp_path / "sub/x.yaml"
    for p in (kept, gone, nested):
        p.write_text("x\n")
    (tmp_path / "notes.txt").write_text("not a golden file\n")
    assert goldens.stale(tmp_path, [kept]) == [gone, nested]
    assert gone.exists() and not updated
    monkeypatch.setenv(goldens.UPDATE_ENV, "1")
    assert goldens.stale(tmp_path, [kept]) == []
    assert not gone.exists() and not nested.exists() and kept.exists()
    assert updated == [("removed", gone), ("removed", nested)]
