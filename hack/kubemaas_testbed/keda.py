"""KEDA on a testbed cluster: its CRDs from the Go module github.com/kedacore/keda/v2 (the files
ship inside the module under config/crd/bases/; nothing is vendored here) and its operator, built
by `hack/build-testbed --with-keda` into the binary cache like the control plane, run as a local
process with the admin kubeconfig.

The operator's metrics gRPC service (what KEDA's metrics API server asks for external metrics)
serves mutual TLS from --cert-dir (ca.crt, tls.crt, tls.key); the testbed makes those with its
own CA. KEDA's admission webhooks and metrics API server are not run: the ScaledObject controller
(which validates a ScaledObject, makes its HPA keda-hpa-NAME and writes its Ready condition) and
the scale loop (activation: 0 <-> minimum) run in the operator itself.

  python -m kubemaas_testbed.keda up STATE_DIR      install the CRDs, start the operator
  python -m kubemaas_testbed.keda down STATE_DIR    stop the operator (the CRDs stay)
"""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

from . import binaries, cluster, gomodule, pki
from .processes import ProcessTable

KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.21.0"
RECORD = "keda-module-dir"
BINARY = f"keda-operator-{KEDA_VERSION}"
PROCESS = "keda-operator"
NAMESPACE = "keda"
# Every CRD whose controller the operator starts (it refuses to start with one missing).
CRDS = ("keda.sh_scaledobjects", "keda.sh_scaledjobs", "keda.sh_triggerauthentications",
        "keda.sh_clustertriggerauthentications", "eventing.keda.sh_cloudeventsources",
        "eventing.keda.sh_clustercloudeventsources")


class KedaError(cluster.ClusterError):
    """KEDA could not be installed or started; the message says why."""


def operator_binary() -> Path:
    found = binaries.find(BINARY)
    if found is None:
        raise binaries.MissingBinaryError(
            f"{BINARY} is not built: run `hack/build-testbed --with-keda` (a cold build of KEDA "
            "took 46 minutes on two shared cores, docs/autoscaling.md)")
    return found


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


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def up(state: Path, kubeconfig: Path, timeout: float = 120.0) -> int:
    """Install the CRDs and start the operator (once: a running one is kept); return its pid."""
    table = ProcessTable(state)
    running = {p.name: p for p in table.running()}
    if PROCESS in running:
        return running[PROCESS].pid
    exe = operator_binary()
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
    deadline = time.monotonic() + timeout
    while not _healthy(ports["probe"]):
        if PROCESS not in {p.name for p in table.running()}:
            raise KedaError(f"the KEDA operator exited; see {proc.log}:\n{_tail(proc.log)}")
        if time.monotonic() > deadline:
            raise KedaError(f"the KEDA operator was not ready after {timeout:.0f} s; see "
                            f"{proc.log}:\n{_tail(proc.log)}")
        time.sleep(0.5)
    return proc.pid


def down(state: Path) -> None:
    ProcessTable(state).stop(PROCESS)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    state_dir = Path(sys.argv[2])
    if sys.argv[1] == "up":
        print(up(state_dir, state_dir / "kubeconfig"))
    else:
        down(state_dir)
