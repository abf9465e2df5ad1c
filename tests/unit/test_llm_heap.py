"""On CPU the engine keeps freed memory in the heap (llm/heap.py): glibc's malloc is told so;
elsewhere nothing is changed."""

from __future__ import annotations

import platform

import pytest

from kubemaas_runtime.llm import heap


def test_glibc_is_told_to_keep_freed_memory() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert heap.keep_freed_memory() is True


def test_without_glibc_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap.platform, "libc_ver", lambda: ("", ""))
    assert heap.keep_freed_memory() is False
