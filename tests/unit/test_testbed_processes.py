"""kubemaas_testbed.processes.wait_until: a testbed process that exits, or is not ready in time,
is reported with the end of its log (real processes, started through the ProcessTable)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kubemaas_testbed.processes import ProcessTable, wait_until

SH = shutil.which("sh") or "/bin/sh"


class Boom(Exception):
    pass


def test_a_process_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    proc = table.start("dies", [SH, "-c", "echo listening failed: port in use; exit 3"])
    with pytest.raises(Boom, match="the dier exited") as err:
        wait_until(table, proc, lambda: False, 30, Boom, "the dier", poll_s=0.05)
    assert "port in use" in str(err.value)


def test_a_process_not_ready_in_time_is_reported_and_left_running(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    proc = table.start("slow", [SH, "-c", "echo still loading; sleep 30"])
    try:
        with pytest.raises(Boom, match="the thing was not Available after 0 s") as err:
            wait_until(table, proc, lambda: False, 0.2, Boom, "the slow one",
                       "the thing was not Available", poll_s=0.05)
        assert "still loading" in str(err.value)
        assert [p.name for p in table.running()] == ["slow"]
    finally:
        table.stop("slow")


def test_ready_returns_at_once(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    proc = table.start("fine", [SH, "-c", "sleep 30"])
    try:
        wait_until(table, proc, lambda: True, 0.1, Boom, "the fine one")
    finally:
        table.stop("fine")
