"""kubemaas_testbed.venvs: a cached venv that sees another site-packages directory (pip counts
what is there as installed) and deletes its own name's venvs under other keys once built."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kubemaas_testbed.venvs import CachedVenv


def fake_distribution(site: Path, name: str, version: str) -> None:
    """An installed distribution as pip and importlib see one: a module and its metadata."""
    (site / f"{name}.py").write_text(f"VERSION = {version!r}\n")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text("")


def test_a_venv_sees_the_shared_packages_and_removes_its_stale_copies(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    fake_distribution(shared, "kmprobe", "1.0")
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = [cache / "probe-0123456789ab", cache / "probe-0123456789ab.pip.log"]
    others = [cache / "probe-extra-0123456789ab", cache / "other-0123456789ab"]
    for path in stale[:1] + others:
        path.mkdir()
    stale[1].write_text("an old pip log\n")

    venv = CachedVenv(cache, "probe", "kmprobe==1.0", shared=shared)
    # --no-index: pip may install nothing, so it succeeds only if it counts the shared copy
    python = venv.ensure([["kmprobe==1.0"]], timeout=300, pip_args=["--no-index"])

    out = subprocess.run([str(python), "-c", "import kmprobe; print(kmprobe.__file__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(shared / "kmprobe.py")
    assert not list(venv.site_packages.glob("kmprobe*")), "pip installed a copy of its own"
    assert not any(path.exists() for path in stale), "the name's venv under another key stayed"
    assert all(path.exists() for path in others), "a venv of another name was deleted"


def test_the_key_follows_what_the_shared_directory_holds(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    fake_distribution(shared, "kmprobe", "1.0")
    before = CachedVenv(tmp_path, "probe", "kmprobe", shared=shared).root
    assert CachedVenv(tmp_path, "probe", "kmprobe", shared=shared).root == before
    (shared / "kmprobe-1.0.dist-info").rename(shared / "kmprobe-1.1.dist-info")
    assert CachedVenv(tmp_path, "probe", "kmprobe", shared=shared).root != before
    assert CachedVenv(tmp_path, "probe", "kmprobe").root != before
