"""Bring the local control plane up and down.

Layout of a state directory (default <repo>/.state/cluster):
    pki/            CA, serving and client certificates, service-account keys;
                    front-proxy/: the aggregation layer's CA and client certificate
    kubeconfig      the admin kubeconfig (system:masters)
    ports.yaml      the ports this instance listens on (all on 127.0.0.1)
    pids/, logs/    one pid file and one log per process
    etcd/           etcd's data
    kwok/           the Stage files kwok runs with
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import binaries, kubeconfig, node, pki, topology
from .processes import ProcessTable, log_tail

SERVICE_CIDR = "10.96.0.0/12"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the kubernetes Service
# kwok hands pods addresses from this range. They exist nowhere: never send
# traffic to them.
POD_CIDR = "10.64.0.1/12"
FAILURE_LABEL = "kubemaas.io/fake-failure"
# Failure modes whose pods must never pass through kwok's default pod-ready stage.
WAITING_REASONS = ["ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                   "CreateContainerError", "RunContainerError"]  # label value = the reason
# slow-start and gpu-oom: the pod-life stages (stages/life.yaml) take the pod through its life.
NEVER_READY = ["not-ready", "image-pull", *WAITING_REASONS, "slow-start", "gpu-oom"]
STOP_ORDER = ["kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
DEFAULT_STATE = binaries.REPO_ROOT / ".state" / "cluster"


class ClusterError(RuntimeError):
    """The testbed could not be brought up; the message names the log to read."""


def default_state_dir() -> Path:
    return Path(os.environ.get("KUBEMAAS_STATE_DIR", DEFAULT_STATE))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    state: Path

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def processes(self) -> ProcessTable:
        return ProcessTable(self.state)

    def ports(self) -> dict[str, int]:
        return dict(yaml.safe_load((self.state / "ports.yaml").read_text()))

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports()['apiserver']}"

    def is_up(self) -> bool:
        names = {p.name for p in self.processes.running()}
        return set(STOP_ORDER) <= names and self._ready()

    # ---- up -----------------------------------------------------------------

    def up(self, topology_name: str = "default", timeout: float = 90.0,
           log: Callable[[str], None] = print, real_node: bool = False) -> None:
        if self.is_up():
            log(f"testbed already up: KUBECONFIG={self.kubeconfig}")
            if real_node:  # real node hook (node.py)
                node.RealNode(self.state).up(self.server, log=log)
            return
        if self.processes.running():
            log("a half-started testbed was found: stopping it first")
            self.down()
        bins = binaries.ensure()
        started = time.monotonic()
        self.state.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in (
            "etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")}
        (self.state / "ports.yaml").write_text(yaml.safe_dump(ports))
        pki.make_all(self.pki, SERVICE_IP)
        node.make_apiserver_client_cert(self.pki)  # real node hook: the apiserver's kubelet client
        for identity in pki.CLIENTS:
            kubeconfig.write(self.state / f"{identity.file_stem}.kubeconfig", self.server,
                             self.pki / "ca.crt", self.pki / f"{identity.file_stem}.crt",
                             self.pki / f"{identity.file_stem}.key", identity.user)
        shutil.copy(self.state / "admin.kubeconfig", self.kubeconfig)
        try:
            self._start_etcd(bins, ports)
            self._start_apiserver(bins, ports)
            self._wait(self._ready, timeout, "kube-apiserver /readyz", "kube-apiserver")
            self._start_controller_manager(bins, ports)
            self._start_scheduler(bins, ports)
            self._start_kwok(bins, ports)
            self.create_nodes(topology.node_manifests(topology.load(topology_name)))
            self._wait(self._all_nodes_ready, timeout, "all nodes Ready", "kwok")
            self._wait(self._default_service_account, timeout,
                       "the default ServiceAccount", "kube-controller-manager")
        except BaseException:
            log(f"testbed failed to start; logs are in {self.state / 'logs'}")
            raise
        log(f"testbed up in {time.monotonic() - started:.1f} s: "
            f"KUBECONFIG={self.kubeconfig}")
        if real_node:  # real node hook (node.py): containerd + kubelet beside kwok
            node.RealNode(self.state).up(self.server, log=log)

    def _start_etcd(self, bins: binaries.Binaries, ports: dict[str, int]) -> None:
        self.processes.start("etcd", [
            str(bins.etcd),
            "--name=testbed",
            f"--data-dir={self.state / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
            f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
            f"--listen-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
            f"--initial-cluster=testbed=http://127.0.0.1:{ports['etcd-peer']}",
            # A test cluster: durability across power loss buys nothing here.
            "--unsafe-no-fsync",
            "--quota-backend-bytes=8589934592",
            "--log-level=warn",
        ])

    def _start_apiserver(self, bins: binaries.Binaries, ports: dict[str, int]) -> None:
        p = self.pki
        self.processes.start("kube-apiserver", [
            str(bins.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # No real endpoint serves the kubernetes Service: nothing may route to it.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            # Room for the scale benchmarks (1,000 nodes and models at once).
            "--max-requests-inflight=1000",
            "--max-mutating-requests-inflight=500",
            "--profiling=false",
            "--v=1",
            # Real node hook (node.py): how the apiserver reaches a real kubelet.
            *node.apiserver_flags(p),
            # The aggregation layer, for KEDA's metrics API server (keda.py).
            *pki.aggregation_flags(p),
        ])

    def _component_args(self, identity: str, port: int) -> list[str]:
        config = self.state / f"{identity}.kubeconfig"
        return [
            f"--kubeconfig={config}",
            f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--v=1",
        ]

    def _start_controller_manager(self, bins: binaries.Binaries, ports: dict[str, int]) -> None:
        p = self.pki
        self.processes.start("kube-controller-manager", [
            str(bins.kube_controller_manager),
            *self._component_args("controller-manager", ports["controller-manager"]),
            f"--root-ca-file={p / 'ca.crt'}",
            f"--service-account-private-key-file={p / 'sa.key'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={p / 'ca.crt'}",
            f"--cluster-signing-key-file={p / 'ca.key'}",
            # Scale benchmarks create pods by the thousand; the defaults (20/30
            # qps) would make the controllers, not kubemaas, the bottleneck.
            "--kube-api-qps=500",
            "--kube-api-burst=1000",
            "--concurrent-deployment-syncs=20",
            "--concurrent-replicaset-syncs=20",
        ])

    def _start_scheduler(self, bins: binaries.Binaries, ports: dict[str, int]) -> None:
        self.processes.start("kube-scheduler", [
            str(bins.kube_scheduler),
            *self._component_args("scheduler", ports["scheduler"]),
        ])

    def _start_kwok(self, bins: binaries.Binaries, ports: dict[str, int]) -> None:
        stages = self.write_stages(bins.kwok_module_dir)
        self.processes.start("kwok", [
            str(bins.kwok),
            f"--kubeconfig={self.state / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={topology.KWOK_ANNOTATION}=fake",
            f"--cidr={POD_CIDR}",
            "--node-ip=10.63.0.1",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            *[f"--config={path}" for path in stages],
        ])

    def write_stages(self, kwok_module: Path) -> list[Path]:
        """kwok's own node and pod stages, read from its module, plus our failure stages.

        The default pod-ready stage is amended to leave alone the pods whose
        failure mode says they never become Ready.
        """
        stage_root = kwok_module / "kustomize" / "stage"
        sources = [
            stage_root / "node" / "fast" / "node-initialize.yaml",
            stage_root / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
            *sorted((stage_root / "pod" / "fast").glob("pod-*.yaml")),
        ]
        out_dir = self.state / "kwok"
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for source in sources:
            stage = yaml.safe_load(source.read_text())
            if stage["metadata"]["name"] == "pod-ready":
                stage["spec"]["selector"]["matchExpressions"].append({
                    "key": f'.metadata.labels["{FAILURE_LABEL}"]',
                    "operator": "NotIn",
                    "values": NEVER_READY,
                })
            target = out_dir / source.name
            target.write_text(yaml.safe_dump(stage, sort_keys=False))
            written.append(target)
        ours = []
        for name in ("failures.yaml", "life.yaml"):
            ours.append(out_dir / f"kubemaas-{name}")
            shutil.copy(Path(__file__).parent / "stages" / name, ours[-1])
        return [*written, *ours]

    def create_nodes(self, manifests: list[dict[str, Any]], workers: int = 16) -> None:
        """Create Node objects (kwok then simulates their kubelets)."""
        from kubernetes import client, config  # only here: the CLI's other verbs need none

        api = client.CoreV1Api(
            config.new_client_from_config(str(self.kubeconfig)))  # type: ignore[no-untyped-call]

        def create(manifest: dict[str, Any]) -> None:
            try:
                # The client takes plain dicts as well as its V1Node models.
                api.create_node(manifest)  # type: ignore[arg-type]
            except client.ApiException as err:
                if err.status != 409:
                    raise

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(create, manifests))

    # ---- readiness ----------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.server + path, context=self._ssl(), timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()

    def _ready(self) -> bool:
        try:
            return bool(self.get("/readyz") == "ok")
        except (urllib.error.URLError, OSError, FileNotFoundError, KeyError):
            return False

    def _all_nodes_ready(self) -> bool:
        nodes = self.get("/api/v1/nodes")["items"]
        return bool(nodes) and all(_node_ready(node) for node in nodes)

    def _default_service_account(self) -> bool:
        try:
            self.get("/api/v1/namespaces/default/serviceaccounts/default")
            return True
        except urllib.error.HTTPError:
            return False

    def _wait(self, check: Callable[[], bool], timeout: float, what: str, component: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = {p.name for p in self.processes.running()}
            dead = [n for n in STOP_ORDER if (self.state / "pids" / f"{n}.pid").exists()
                    and n not in running]
            if dead:
                raise ClusterError(f"{dead[0]} exited; see {self.state / 'logs' / dead[0]}.log:\n"
                                   + log_tail(self.state / "logs" / f"{dead[0]}.log"))
            if check():
                return
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}; see "
                           f"{self.state / 'logs' / component}.log:\n"
                           + log_tail(self.state / "logs" / f"{component}.log"))

    # ---- down / status ------------------------------------------------------

    def down(self) -> None:
        node.RealNode(self.state).down()  # real node hook: no-op without one
        self.processes.stop_all(STOP_ORDER)
        if self.state.exists():
            shutil.rmtree(self.state)

    def status(self) -> dict[str, Any]:
        running = {p.name: p.pid for p in self.processes.running()}
        return {
            "state": str(self.state),
            "up": self.is_up(),
            "processes": {name: running.get(name) for name in STOP_ORDER},
            # Real node hook (node.py): null when not started.
            "real_node": ({name: running.get(name) for name in node.STOP_ORDER}
                          if (self.state / "node").exists() else None),
            "kubeconfig": str(self.kubeconfig) if self.kubeconfig.exists() else None,
        }


def _node_ready(node: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in node.get("status", {}).get("conditions", []))



def kubectl(kubeconfig_path: Path, *args: str, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binaries.kubectl(), f"--kubeconfig={kubeconfig_path}", *args],
                          check=check, capture_output=True, text=True, input=input)


def wait_established(kubeconfig_path: str | Path, *crds: str, timeout: float = 120.0) -> None:
    """Wait until each CustomResourceDefinition (by name) is Established. Polled rather than
    `kubectl wait`, which fails at once ("accessor error") when it reads a CRD before the API
    server has written any condition, as happened on a loaded machine."""
    deadline = time.monotonic() + timeout
    query = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
    for crd in crds:
        while kubectl(Path(kubeconfig_path), "get", f"crd/{crd}", "-o", query,
                      check=False).stdout.strip() != "True":
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {crd} not Established after {timeout:.0f} s")
            time.sleep(0.2)


# ---- restart (rollout tests: the operator must survive a control-plane restart) -----------


def restart(state: Path, component: str, timeout: float = 60.0) -> float:
    """Stop one of the testbed's processes by its pid and start it again with the same command
    line; wait until the API server answers /readyz again. Returns the seconds it was away."""
    cluster = Cluster(state)
    pid_file = cluster.processes.pid_dir / f"{component}.pid"
    pid = int(pid_file.read_text().split("\n")[0])
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    started = time.monotonic()
    cluster.processes.stop(component)
    cluster.processes.start(component, argv)
    cluster._wait(cluster._ready, timeout, "kube-apiserver /readyz", component)
    return time.monotonic() - started
