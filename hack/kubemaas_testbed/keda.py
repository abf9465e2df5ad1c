"""KEDA on a testbed cluster: its CRDs from the Go module github.com/kedacore/keda/v2 (the files
ship inside the module under config/crd/bases/; nothing is vendored here), its operator and its
metrics API server, built by `hack/build-testbed --with-keda` into the binary cache like the
control plane, run as local processes with the admin kubeconfig.

The operator's metrics gRPC service (what the metrics API server asks for external metrics)
serves mutual TLS from --cert-dir (ca.crt, tls.crt, tls.key); the testbed makes those with its
own CA. The ScaledObject controller (which validates a ScaledObject, makes its HPA keda-hpa-NAME
and writes its Ready condition) and the scale loop (activation: 0 <-> minimum) run in the
operator; the metrics API server serves external.metrics.k8s.io, which the HPA reads to scale
between minimum and maximum. The API server aggregates it through the APIService
v1beta1.external.metrics.k8s.io, whose Service is an ExternalName `localhost` (the aggregator
dials an ExternalName as named, so the proxied requests go to 127.0.0.1 and nowhere else; the
aggregation-layer flags and certificates are the testbed's, cluster.py and pki.py). KEDA's
admission webhooks are not run.

  python -m kubemaas_testbed.keda up STATE_DIR      install the CRDs, start both
  python -m kubemaas_testbed.keda down STATE_DIR    stop both (the CRDs stay)
"""

from __future__ import annotations

import base64
import sys
import urllib.request
from pathlib import Path

import yaml

from . import binaries, cluster, gomodule, pki
from .processes import ProcessTable, wait_until

KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.21.0"
RECORD = "keda-module-dir"
BINARY = f"keda-operator-{KEDA_VERSION}"
PROCESS = "keda-operator"
ADAPTER_BINARY = f"keda-adapter-{KEDA_VERSION}"
ADAPTER_PROCESS = "keda-metrics-apiserver"
APISERVICE = "v1beta1.external.metrics.k8s.io"
NAMESPACE = "keda"
# Every CRD whose controller the operator starts (it refuses to start with one missing).
CRDS = ("keda.sh_scaledobjects", "keda.sh_scaledjobs", "keda.sh_triggerauthentications",
        "keda.sh_clustertriggerauthentications", "eventing.keda.sh_cloudeventsources",
        "eventing.keda.sh_clustercloudeventsources")


class KedaError(cluster.ClusterError):
    """KEDA could not be installed or started; the message says why."""


def operator_binary() -> Path:
    return binaries.require(BINARY, "`hack/build-testbed --with-keda` (a cold build of KEDA took "
                                    "46 minutes on two shared cores, docs/autoscaling.md)")


def adapter_binary() -> Path:
    return binaries.require(ADAPTER_BINARY, "`hack/build-testbed --with-keda`")


def built() -> bool:
    """Both of KEDA's binaries are in the cache."""
    return binaries.find(BINARY) is not None and binaries.find(ADAPTER_BINARY) is not None


def module_dir() -> Path:
    """The module's directory in the Go module cache (downloaded when missing)."""
    return gomodule.module_dir(KEDA_MODULE, KEDA_VERSION, RECORD)


def crd_files() -> list[Path]:
    base = module_dir() / "config" / "crd" / "bases"
    return gomodule.existing([base / f"{name}.yaml" for name in CRDS], "KEDA CRDs")


def crd_names() -> list[str]:
    names = []
    for stem in CRDS:
        group, plural = stem.split("_", 1)
        names.append(f"{plural}.{group}")
    return names


def install_crds(kubeconfig: str | Path, timeout: float = 60.0) -> list[str]:
    """Apply the CRDs (server-side: a second run changes nothing) until Established."""
    return gomodule.apply_crds(kubeconfig, crd_files(), crd_names(), timeout)


def _certs(state: Path) -> Path:
    """ca.crt, tls.crt and tls.key for the operator's metrics gRPC service (mutual TLS)."""
    certs = state / "keda-certs"
    if (certs / "tls.key").exists():
        return certs
    certs.mkdir(parents=True, exist_ok=True)
    pki.make_ca(certs)
    pki.sign(certs, "tls", "/CN=keda-operator",
             "keyUsage=critical,digitalSignature,keyEncipherment\n"
             "extendedKeyUsage=serverAuth,clientAuth\n"
             "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:keda-operator\n")
    return certs


def _adapter_serving_cert(certs: Path) -> tuple[Path, Path]:
    """The metrics API server's serving certificate: the aggregator verifies it for the name
    SERVICE.NAMESPACE.svc against the APIService's caBundle (our CA)."""
    if not (certs / "adapter.key").exists():
        pki.make_serving(certs, "adapter", ADAPTER_PROCESS, [
            f"DNS:{ADAPTER_PROCESS}.{NAMESPACE}.svc", "DNS:localhost", "IP:127.0.0.1"])
    return certs / "adapter.crt", certs / "adapter.key"


def metrics_api_manifests(port: int, ca_bundle: bytes) -> list[dict[str, object]]:
    """The APIService for external.metrics.k8s.io behind an ExternalName Service `localhost`
    (the metrics API server on 127.0.0.1:PORT), and the HPA controller's right to read it (as
    KEDA's own manifests grant it)."""
    reader = "keda-external-metrics-reader"
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": ADAPTER_PROCESS, "namespace": NAMESPACE},
         "spec": {"type": "ExternalName", "externalName": "localhost",
                  "ports": [{"name": "https", "port": port}]}},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": APISERVICE},
         "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1",
                  "service": {"name": ADAPTER_PROCESS, "namespace": NAMESPACE, "port": port},
                  "caBundle": base64.b64encode(ca_bundle).decode(),
                  "groupPriorityMinimum": 100, "versionPriority": 100}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": reader},
         "rules": [{"apiGroups": ["external.metrics.k8s.io"], "resources": ["*"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": reader},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": reader},
         "subjects": [{"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler",
                       "namespace": "kube-system"}]},
    ]


def _apiservice_available(kubeconfig: Path) -> bool:
    out = cluster.kubectl(kubeconfig, "get", "apiservice", APISERVICE, "-o",
                          "jsonpath={.status.conditions[?(@.type=='Available')].status}",
                          check=False)
    return out.stdout.strip() == "True"


def _start_adapter(table: ProcessTable, kubeconfig: Path, certs: Path, grpc_port: int,
                   timeout: float) -> None:
    """Start the metrics API server and register it with the aggregator; wait until the
    APIService is Available (the API server reached it, through the front proxy)."""
    crt, key = _adapter_serving_cert(certs)
    port, metrics_port = cluster.free_port(), cluster.free_port()
    proc = table.start(ADAPTER_PROCESS, [
        str(adapter_binary()),
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={crt}",
        f"--tls-private-key-file={key}",
        f"--cert-dir={certs}",  # ca.crt, tls.crt, tls.key: its mutual TLS to the operator
        f"--metrics-service-address=127.0.0.1:{grpc_port}",
        f"--port={metrics_port}",  # its own /metrics (KEDA binds it on every interface)
        f"--lister-kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--zap-log-level=info",
    ], env={"WATCH_NAMESPACE": "", "POD_NAMESPACE": NAMESPACE,
            "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE, "KUBECONFIG": str(kubeconfig)})
    cluster.kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts",
                    "--field-manager=kubemaas-testbed", "-f", "-",
                    input=yaml.safe_dump_all(metrics_api_manifests(
                        port, (certs / "ca.crt").read_bytes())))
    try:
        wait_until(table, proc, lambda: _apiservice_available(kubeconfig), timeout, KedaError,
                   "KEDA's metrics API server", f"the APIService {APISERVICE} was not Available")
    except KedaError:
        _remove_apiservice(kubeconfig)  # an APIService without its server breaks discovery
        raise


def _remove_apiservice(kubeconfig: Path) -> None:
    """An APIService whose server is gone makes discovery fail for every client: it goes
    before its server."""
    cluster.kubectl(kubeconfig, "delete", "apiservice", APISERVICE, "--ignore-not-found",
                    "--request-timeout=20s", check=False)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def up(state: Path, kubeconfig: Path, timeout: float = 120.0, metrics_api: bool = True) -> int:
    """Install the CRDs and start the operator and (with `metrics_api`) the metrics API server
    (once: running ones are kept); return the operator's pid."""
    table = ProcessTable(state)
    running = {p.name: p for p in table.running()}
    if PROCESS in running:
        return running[PROCESS].pid
    exe = operator_binary()
    if metrics_api:
        adapter_binary()  # missing: say so before anything starts
    install_crds(kubeconfig)
    cluster.kubectl(kubeconfig, "create", "namespace", NAMESPACE, check=False)
    certs = _certs(state)
    ports = {k: cluster.free_port() for k in ("metrics", "probe", "grpc")}
    proc = table.start(PROCESS, [
        str(exe),
        f"--kubeconfig={kubeconfig}",
        f"--metrics-bind-address=127.0.0.1:{ports['metrics']}",
        f"--health-probe-bind-address=127.0.0.1:{ports['probe']}",
        f"--metrics-service-bind-address=127.0.0.1:{ports['grpc']}",
        f"--cert-dir={certs}",
        f"--ca-dir={certs}",
        "--enable-webhook-patching=false",
        "--enable-apiservice-patching=false",
        "--zap-log-level=info",
    ], env={"WATCH_NAMESPACE": "", "POD_NAMESPACE": NAMESPACE,
            "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE, "OPERATOR_NAME": PROCESS,
            "KUBECONFIG": str(kubeconfig)})
    wait_until(table, proc, lambda: _healthy(ports["probe"]), timeout, KedaError,
               "the KEDA operator")
    if metrics_api:
        _start_adapter(table, kubeconfig, certs, ports["grpc"], timeout)
    return proc.pid


def down(state: Path, kubeconfig: Path | None = None) -> None:
    """Stop the metrics API server (its APIService removed first) and the operator."""
    table = ProcessTable(state)
    kubeconfig = kubeconfig or state / "kubeconfig"
    if kubeconfig.exists():
        _remove_apiservice(kubeconfig)
    table.stop(ADAPTER_PROCESS)
    table.stop(PROCESS)



if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    state_dir = Path(sys.argv[2])
    if sys.argv[1] == "up":
        print(up(state_dir, state_dir / "kubeconfig"))
    else:
        down(state_dir)
