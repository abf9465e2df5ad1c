"""`hack/SCRIPT --help` prints how to use the script and does nothing else (docs name these
scripts; a reader asks them first). A script refuses an argument it does not take rather than run.

Each script runs from a copy of hack/ in a temporary directory, with stand-ins first on PATH
for every tool that would install, build or fetch (they record their name and fail), so a
script that acts on --help fails here without touching this machine or the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASH = ["hack/test", "hack/demo", "hack/lock", "hack/install-python", "hack/install-node-deps",
        "hack/chart-previous", "hack/build-testbed", "hack/node/build-images"]
PYTHON = ["hack/chart-sync", "hack/api-docs"]
REFUSE = ["hack/install-python", "hack/install-node-deps", "hack/chart-previous", "hack/demo"]
TOOLS = ["sudo", "apt-get", "dpkg-query", "python3", "pip", "go", "git", "helm", "podman",
         "debootstrap", "curl", "uv", "tar"]


@pytest.fixture()
def sandbox(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    shutil.copytree(ROOT / "hack", tmp_path / "repo" / "hack",
                    ignore=shutil.ignore_patterns("__pycache__"))
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    ran = tmp_path / "ran"
    for tool in TOOLS:
        stub = stubs / tool
        stub.write_text(f"#!/bin/sh\necho {tool} >>{ran}\nexit 97\n")
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}",
           "HOME": str(tmp_path / "home"), "KUBEMAAS_TESTBED_CACHE": str(tmp_path / "cache"),
           "KUBEMAAS_NODE_CACHE": str(tmp_path / "node")}
    return tmp_path / "repo", env, ran


def _run(repo: Path, env: dict[str, str], script: str,
         *args: str) -> subprocess.CompletedProcess[str]:
    command = ([sys.executable] if script in PYTHON else ["bash"]) + [str(repo / script), *args]
    return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True,
                          timeout=30, check=False)


@pytest.mark.parametrize("script", BASH + PYTHON)
def test_help_prints_usage_and_runs_nothing(sandbox: tuple[Path, dict[str, str], Path],
                                            script: str) -> None:
    repo, env, ran = sandbox
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    done = _run(repo, env, script, "--help")
    assert done.returncode == 0, done.stderr
    assert script in done.stdout, done.stdout  # the usage names the script
    assert not ran.exists(), f"--help ran {ran.read_text().split()}"
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before  # wrote nothing


@pytest.mark.parametrize("script", REFUSE + PYTHON)
def test_an_unknown_argument_is_refused(sandbox: tuple[Path, dict[str, str], Path],
                                        script: str) -> None:
    repo, env, ran = sandbox
    done = _run(repo, env, script, "--bogus")
    assert done.returncode == 2 and "--bogus" in done.stderr, (done.returncode, done.stderr)
    assert not ran.exists()


def test_cluster_env_without_a_testbed_says_so(tmp_path: Path) -> None:
    """`eval "$(hack/cluster env)"` printed an export of a kubeconfig for a testbed that was
    not up (exit 0): kubectl then pointed at nothing."""
    done = subprocess.run([str(ROOT / "hack" / "cluster"), "--state", str(tmp_path / "none"),
                           "env"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1 and "not up" in done.stderr, (done.returncode, done.stderr)
    assert "export" not in done.stdout
