"""Fixtures for every test tier.

The cluster tier stands on the local control plane (hack/kubemaas_testbed):
a session fixture starts a private testbed once per test session, or uses an
existing cluster when KUBEMAAS_KUBECONFIG names a kubeconfig (kind, a real
cluster, or one started by `hack/cluster up`).
"""

from __future__ import annotations

import json
import os
import subprocess
import traceback
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for

LOG_DIR_KEY = pytest.StashKey[Path]()

# Where each child process was started: a run's end names those still running (a test or a
# fixture that left one behind; Python would only warn "subprocess N is still running" at exit,
# without saying whose it is).
_STARTED_AT: weakref.WeakKeyDictionary[subprocess.Popen[Any], str] = \
    weakref.WeakKeyDictionary()
_popen_init = subprocess.Popen.__init__


def _traced_popen_init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
    _popen_init(self, *args, **kwargs)
    _STARTED_AT[self] = "".join(traceback.format_stack(limit=10)[:-1])


subprocess.Popen.__init__ = _traced_popen_init  # type: ignore[method-assign]


@dataclass
class Kube:
    """A cluster the tests talk to: its kubeconfig, kubectl, and a client."""

    kubeconfig: Path
    log_dir: Path | None = None
    _api: Any = field(default=None, repr=False)

    @property
    def api(self) -> Any:
        """A kubernetes.client.ApiClient for the admin identity."""
        if self._api is None:
            from kubernetes import config

            self._api = config.new_client_from_config(str(self.kubeconfig))
        return self._api

    def read(self, path: str, selector: str | None = None) -> dict[str, Any]:
        """GET an API path (`/apis/apps/v1/namespaces/N/deployments/X`) as JSON, in process;
        a list of them with `selector` (a label selector, as `kubectl get -l` takes).
        The tests' polls read through this: a kubectl process a look cost about 0.1 CPU-s,
        a third of what a cluster test kept busy on a two-core machine. Any answer but 200 is
        an AssertionError naming it, as a failed kubectl is."""
        method, url, headers, _, _ = self.api.param_serialize(
            "GET", path, query_params=[("labelSelector", selector)] if selector else None,
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        response = self.api.call_api(method, url, header_params=headers,
                                     _request_timeout=30)
        body = response.read()
        if response.status != 200:
            raise AssertionError(f"GET {path}: {response.status} {body[:500]!r}")
        return dict(json.loads(body))

    def gone(self, path: str) -> bool:
        """Whether the API server answers 404 for `path` (the object is deleted)."""
        try:
            self.read(path)
        except AssertionError as err:
            if ": 404 " in str(err):
                return True
            raise
        return False

    def kubectl(self, *args: str, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        from kubemaas_testbed.binaries import kubectl

        result = subprocess.run([kubectl(), f"--kubeconfig={self.kubeconfig}", *args],
                                capture_output=True, text=True, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stderr}{result.stdout}")
        return result


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory,
         request: pytest.FixtureRequest) -> Iterator[Kube]:
    existing = os.environ.get("KUBEMAAS_KUBECONFIG")
    if existing:
        yield Kube(Path(existing))
        return
    from kubemaas_testbed.cluster import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("testbed"))
    request.config.stash[LOG_DIR_KEY] = cluster.state / "logs"
    try:
        cluster.up(log=lambda msg: print(f"[testbed] {msg}"))
        yield Kube(cluster.kubeconfig, log_dir=cluster.state / "logs")
    finally:
        cluster.processes.stop_all(["kwok", "kube-scheduler", "kube-controller-manager",
                                    "kube-apiserver", "etcd"])


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    # The controller-manager adds the default ServiceAccount a moment later (longer
    # on a busy machine or after an API server restart); pods are refused until then.
    wait_for(lambda: kube.read(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
             timeout=60, what=f"the default ServiceAccount in namespace {name}")
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def delete_namespace_and_its_pods(kube: Kube, name: str) -> None:
    """Delete the namespace and its pods; return once the pods are gone: what the next test
    counts (free GPUs). Waiting for the namespace cost ~11 s a test: its controller starts 5 s
    after the deletion, and, finding the pods still listed after deleting them, looks again
    only after half their grace period, while kwok deletes them at once. Deleting the pods here
    needs neither wait, and nothing replaces them: a terminating namespace admits no new
    objects."""
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
    kube.kubectl("-n", name, "delete", "pods", "--all", "--wait=false", check=False)
    wait_for(lambda: not json.loads(kube.kubectl("-n", name, "get", "pods", "-o", "json")
                                    .stdout)["items"],
             timeout=60, what=f"the pods of namespace {name} to be gone")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    log_dir = item.config.stash.get(LOG_DIR_KEY, None)
    if report.failed and log_dir is not None and "kube" in getattr(item, "fixturenames", ()):
        # CI keeps only what is printed: show where the logs are and how they end.
        tails = [f"control-plane logs: {log_dir}"]
        for log in sorted(log_dir.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-8:]
            tails.append(f"--- {log.name} (last {len(lines)} lines)\n" + "\n".join(lines))
        report.sections.append(("testbed logs", "\n".join(tails)))
    return report


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """hack/test's two workers (pytest-xdist, --dist loadscope): the cluster tier shares one
    testbed, so all of it runs on one worker, in order; every other test file is a unit of its
    own (its module fixtures start once, on one worker). xdist's own loadgroup would do this
    from markers, but under pytest 9 it loses the group names it adds to the test ids."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/cluster" if path.startswith("tests/cluster/") else path

    return TierScheduling(config, log)


def _still_running() -> list[str]:
    return [f"pid {proc.pid}: {proc.args!r}, started at\n{origin}"
            for proc, origin in list(_STARTED_AT.items()) if proc.poll() is None]


_WORKERS_LEFT: list[str] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker of hack/test's (pytest-xdist) hands its leftovers to the main process, which
    alone prints a summary."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["still_running"] = _still_running()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    _WORKERS_LEFT.extend(getattr(node, "workeroutput", {}).get("still_running", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The child processes still running, and where they were started; after a golden update
    run (KUBEMAAS_UPDATE_GOLDEN=1), the golden files it touched."""
    from tests.goldens import summary

    running = _still_running() + _WORKERS_LEFT
    if running:
        terminalreporter.section("child processes still running")
        for line in running:
            terminalreporter.write_line(line)

    lines = summary(Path(__file__).resolve().parents[1])
    if lines:
        terminalreporter.section("golden files")
        for line in lines:
            terminalreporter.write_line(line)
