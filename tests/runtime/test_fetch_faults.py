"""The downloader on a full disk (a 1 MiB tmpfs mounted by the test: the machines run tests as
root) and against damaged partial files: DiskFull with the numbers, before the download when the
sizes are known and mid-write when they are not; a partial file whose bytes are wrong is caught
by the checksum and never loaded."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubemaas_testbed.model_servers import FileServer, write_index

from .fetch_helpers import plant_partial, run_fetch

MIB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real filesystem that fills up (ENOSPC), not a simulated error."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"this test mounts a 1 MiB tmpfs and needs root (CAP_SYS_ADMIN): "
                    f"{done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture
def served(tmp_path: Path) -> Path:
    root = tmp_path / "srv" / "m"
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "weights.bin").write_bytes(os.urandom(3 * MIB))
    return root


def test_disk_full_before_the_download(served: Path, small_disk: Path) -> None:
    write_index(served)  # sizes known: the fetch sees it cannot fit
    with FileServer(served.parent) as server:
        rc, report, fetch = run_fetch(["--source", f"{server.url}/m/", "--dest",
                                       str(small_disk / "cache"), "--retries", "3"])
        assert not server.served.get("m/weights.bin")  # it did not even start
    assert rc == 1, fetch.stderr
    assert report["phase"] == "Failed" and report["reason"] == "DiskFull"
    assert report["attempts"] == 1  # not retried: more attempts cannot make room
    assert report["bytesNeeded"] >= 3 * MIB and report["bytesFree"] <= MIB
    assert str(report["bytesNeeded"]) in report["message"]
    assert str(report["bytesFree"]) in report["message"]


def test_disk_full_mid_write(served: Path, small_disk: Path) -> None:
    write_index(served, sizes=False)
    with FileServer(served.parent) as server:
        server.no_length = True  # no Content-Length either: only the write can find out
        rc, report, fetch = run_fetch(["--source", f"{server.url}/m/", "--dest",
                                       str(small_disk / "cache"), "--retries", "3"])
    assert rc == 1, fetch.stderr
    assert report["reason"] == "DiskFull" and report["attempts"] == 1, report
    # the disk fills while weights.bin is written; which write meets ENOSPC first (its bytes,
    # or another file's bookkeeping) is a race, so the message is checked for the numbers
    assert "no space left" in report["message"]
    assert report["bytesCapacity"] == MIB and report["bytesFree"] < 64 << 10
    assert f"{report['bytesFree']} bytes free" in report["message"]
    assert not (small_disk / "cache" / "weights.bin").exists()


def test_a_damaged_partial_file_is_never_loaded(served: Path, tmp_path: Path) -> None:
    write_index(served)
    dest = tmp_path / "dest"
    data = (served / "weights.bin").read_bytes()
    with FileServer(served.parent) as server:
        # a prefix that is not the file's, left by an earlier fetch of the same source
        partial = plant_partial(dest, "weights.bin", b"\0" * MIB, f"{server.url}/m/")
        rc, report, fetch = run_fetch(["--source", f"{server.url}/m/", "--dest", str(dest)])
        assert rc == 1 and report["reason"] == "ChecksumMismatch", fetch.stderr
        assert not (dest / "weights.bin").exists() and not partial.exists()
        # the bad prefix was dropped: the next fetch starts the file over and succeeds
        rc, report, fetch = run_fetch(["--source", f"{server.url}/m/", "--dest", str(dest)])
    assert rc == 0, fetch.stderr
    assert (dest / "weights.bin").read_bytes() == data
    assert {f["path"]: f["sha256"] for f in report["files"]}["weights.bin"] == \
        hashlib.sha256(data).hexdigest()


def test_a_read_only_destination_is_not_retried(served: Path, tmp_path: Path) -> None:
    write_index(served)
    mnt = tmp_path / "ro"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"this test mounts a read-only tmpfs and needs root: {done.stderr.strip()}")
    try:
        with FileServer(served.parent) as server:
            rc, report, fetch = run_fetch(["--source", f"{server.url}/m/", "--dest",
                                           str(mnt / "cache"), "--retries", "3"])
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert rc == 1, fetch.stderr
    assert (report["reason"], report["attempts"]) == ("NotWritable", 1), report
    assert "Read-only file system" in report["message"]
