"""The operator under test: the CRD and RBAC installed with kubectl, and
`python -m kubemaas_operator` run as a real process under its own ServiceAccount's token (so the
RBAC file is tested too), its log attached to every failing test that used it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubemaas_testbed.cluster import wait_established
from tests.conftest import Kube, delete_namespace_and_its_pods
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "serving.kubemaas.io_modeldeployments.yaml"
CACHE_CRD = ROOT / "crds" / "serving.kubemaas.io_modelcaches.yaml"
RBAC = ROOT / "operator" / "kubemaas_operator" / "rbac" / "operator.yaml"
OPERATOR_NAMESPACE = "kubemaas-system"
LOG_KEY = pytest.StashKey[Path]()

# Short periods so that the tests see resyncs and grace periods expire within seconds.
OPERATOR_ENV = {
    "KUBEMAAS_OPERATOR_RESYNC_S": "3",
    "KUBEMAAS_OPERATOR_NOT_READY_GRACE_S": "5",
    "KUBEMAAS_OPERATOR_TEMPLATES_TTL_S": "1",
    "KUBEMAAS_OPERATOR_GATEWAY_DISCOVERY_S": "1",  # test_rollout_gateway installs the CRDs late
    "KUBEMAAS_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
    "KUBEMAAS_OPERATOR_MONITORING_NAMESPACE": "monitoring",  # in the models' NetworkPolicies
}
RESYNC_S = float(OPERATOR_ENV["KUBEMAAS_OPERATOR_RESYNC_S"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Operator:
    """A running operator process: its log, its health endpoint, and a restart."""

    kube: Kube
    workdir: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    metrics_port: int = 0  # the operator's GET /metrics
    # writes per namespace at the last scrape, and those of namespaces whose series went since
    # (deleted namespaces: metrics.forget_namespace), so that apiWrites never goes back
    _seen: dict[str, int] = field(default_factory=dict, repr=False)
    _gone: int = 0

    def _kubeconfig(self) -> Path:
        token = self.kube.kubectl("-n", OPERATOR_NAMESPACE, "create", "token",
                                  "kubemaas-operator", "--duration=2h").stdout.strip()
        admin = yaml.safe_load(Path(self.kube.kubeconfig).read_text())
        current = admin.get("current-context")
        context = next((c for c in admin["contexts"] if c["name"] == current),
                       admin["contexts"][0])["context"]
        cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
        config = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster],
                  "users": [{"name": "kubemaas-operator", "user": {"token": token}}],
                  "contexts": [{"name": "operator", "context": {
                      "cluster": cluster["name"], "user": "kubemaas-operator"}}],
                  "current-context": "operator"}
        path = self.workdir / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self) -> None:
        self._seen, self._gone = {}, 0  # a new process counts from 0
        self.port = _free_port()
        self.metrics_port = _free_port()
        env = {**os.environ, **OPERATOR_ENV, **self.env,
               "KUBECONFIG": str(self._kubeconfig()),
               "KUBEMAAS_OPERATOR_HEALTH_PORT": str(self.port),
               "KUBEMAAS_OPERATOR_METRICS_PORT": str(self.metrics_port)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with self.log.open("ab") as out:
            out.write(f"\n===== operator start {time.strftime('%H:%M:%S')} =====\n".encode())
            out.flush()
            self.process = subprocess.Popen([sys.executable, "-m", "kubemaas_operator"],
                                            stdout=out, stderr=subprocess.STDOUT, env=env,
                                            cwd=ROOT)
        wait_for(self.health, timeout=30, what=f"operator health on :{self.port} (log {self.log})")
        wait_for(self.counters, timeout=30,
                 what=f"operator metrics on :{self.metrics_port} (log {self.log})")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=2) as response:
                return dict(json.loads(response.read()))
        except OSError:
            return None

    def fresh_health(self, after: float | None = None, timeout: float = 30) -> dict[str, Any]:
        """The health document of probes taken after `after` (UNIX time; default now). kopf
        serves probe results for up to 10 s: this waits until the results it serves are newer
        (their `probedAt`), so a counter read here is never an earlier, cached value."""
        since = time.time() if after is None else after

        def fresh() -> dict[str, Any] | None:
            state = self.health()
            return state if state is not None and float(state["probedAt"]) >= since else None
        return wait_for(fresh, timeout=timeout, interval=0.5,
                        what=f"operator probe results newer than {since:.1f} (log {self.log})")

    def counters(self) -> dict[str, Any]:
        """The operator's counters under the health document's names, `apiWrites`,
        `apiWritesByNamespace` ("" for cluster-scoped objects; a deleted namespace's series
        goes, its writes stay in apiWrites) and `resyncs`, read from its
        GET /metrics (kubemaas_operator_api_writes_total{namespace},
        kubemaas_operator_resync_passes_total): computed at each scrape, where /healthz serves
        kopf's probe results up to 10 s old (fresh_health waits those out)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as response:
            text = response.read().decode()
        by_namespace: dict[str, int] = {}
        resyncs = 0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "kubemaas_operator_api_writes_total":
                    by_namespace[sample.labels["namespace"]] = int(sample.value)
                elif sample.name == "kubemaas_operator_resync_passes_total":
                    resyncs = int(sample.value)
        # a series gone (its namespace deleted) or started again from 0 keeps its writes in
        # the total
        self._gone += sum(v for ns, v in self._seen.items() if by_namespace.get(ns, 0) < v)
        self._seen = dict(by_namespace)
        return {"apiWrites": sum(by_namespace.values()) + self._gone,
                "apiWritesByNamespace": by_namespace, "resyncs": resyncs}

    def writes(self) -> int:
        """API write requests since the process started, read after this call began."""
        return int(self.counters()["apiWrites"])

    def wait_resyncs(self, passes: int, timeout: float = 60) -> dict[str, Any]:
        """Until `passes` more periodic resync passes have started than when called (so at
        least passes - 1 whole resync periods of reconciles lie between); the counters then,
        read within 0.1 s of that pass's start."""
        start = int(self.counters()["resyncs"])
        return wait_for(lambda: (lambda c: c if int(c["resyncs"]) >= start + passes else None)(
            self.counters()), timeout=timeout, interval=0.1,
            what=f"{passes} resync passes of the operator (log {self.log})")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def writes_during(self, passes: int, namespace: str) -> tuple[int, int]:
        """The operator's writes to objects in `namespace` through `passes` resync passes that
        begin once a pass has started after this call (what was under way has landed), and how
        many passes went by. Counted by namespace: earlier tests' namespaces going away write
        too, in the session's shared operator."""
        before = self.wait_resyncs(1)
        after = self.wait_resyncs(passes)
        return (writes_to(after, namespace) - writes_to(before, namespace),
                int(after["resyncs"]) - int(before["resyncs"]))


def writes_to(counters: dict[str, Any], namespace: str) -> int:
    """The operator's API writes to objects in `namespace`, from Operator.counters()."""
    return int(counters["apiWritesByNamespace"].get(namespace, 0))


@contextmanager
def reconfigured(operator: Operator, **env: str) -> Iterator[Operator]:
    """The session's operator restarted with `env` on top of OPERATOR_ENV for a block (a long
    KUBEMAAS_OPERATOR_RESYNC_S, say, so that only watch events can explain what it does), and
    restarted with its own settings afterwards."""
    saved = operator.env
    operator.env = {**saved, **env}
    operator.restart()
    try:
        yield operator
    finally:
        operator.env = saved
        operator.restart()


def install(kube: Kube) -> None:
    """The CRD and the operator's RBAC, as a user would install them."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CACHE_CRD))
    wait_established(kube.kubeconfig, "modeldeployments.serving.kubemaas.io")
    wait_established(kube.kubeconfig, "modelcaches.serving.kubemaas.io")
    if kube.kubectl("get", "namespace", OPERATOR_NAMESPACE, check=False).returncode != 0:
        kube.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    kube.kubectl("apply", "-f", str(RBAC))


@pytest.fixture(scope="session")
def operator(kube: Kube, tmp_path_factory: pytest.TempPathFactory,
             request: pytest.FixtureRequest) -> Iterator[Operator]:
    install(kube)
    workdir = tmp_path_factory.mktemp("operator")
    op = Operator(kube=kube, workdir=workdir, log=workdir / "operator.log")
    request.config.stash[LOG_KEY] = op.log
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    log = item.config.stash.get(LOG_KEY, None)
    if report.failed and log is not None and "operator" in getattr(item, "fixturenames", ()):
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        report.sections.append((f"operator log ({log}, last 150 lines)",
                                "\n".join(lines[-150:])))
    return report


@pytest.fixture
def quiet_h100(kube: Kube) -> None:
    """Wait until earlier tests' GPU pods are gone, so free capacity is what this test makes."""
    def settled() -> bool:
        pods = json.loads(kube.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
        return not any(p["metadata"].get("deletionTimestamp") for p in pods)
    wait_for(settled, timeout=60, what="terminating pods of earlier tests to be gone")


@pytest.fixture
def ns(kube: Kube, namespace: str, operator: Operator, quiet_h100: None) -> Iterator[str]:
    """A namespace whose GPU pods are gone before the next test counts free GPUs (the rollout
    tests': they fill and count the kwok H100s)."""
    yield namespace
    delete_namespace_and_its_pods(kube, namespace)
