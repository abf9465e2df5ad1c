"""KEDA's HTTP add-on on a testbed cluster: what wakes a model at zero on its first request.

Its CRDs (InterceptorRoute, HTTPScaledObject: the interceptor watches both) come from the source
vendored in third_party/keda-http-add-on (the Go module proxy refuses the module); its interceptor
and external scaler are built from there by `hack/build-testbed --with-keda` into the binary cache
and run here as host processes with the admin kubeconfig, both listening on 127.0.0.1 only
(KEDA_HTTP_BIND_ADDRESS, a local patch of the vendored source):

- the interceptor: its proxy (where requests go; it holds a request for a model with no ready
  pod and forwards it once one is Ready) and its admin port (the pending-request counts). It runs
  with direct-to-pod routing: it dials a ready pod IP:port from the Service's EndpointSlices,
  never the Service's ClusterIP. The upstream it would otherwise dial is the name
  NAME.NAMESPACE, which this machine cannot resolve (it has no cluster DNS), so a request is
  forwarded to a pod's IP or not at all: on the testbed, a real-node pod's IP on our bridge.
- the external scaler: KEDA's operator opens its external-push stream to it (the trigger's
  scalerAddress); it asks the interceptor's admin port for the pending counts. In a cluster it
  finds the interceptors from the EndpointSlices of their admin Service; here it is told the
  address, 127.0.0.1 (KEDA_HTTP_SCALER_TARGET_ADMIN_ADDRESSES, a second local patch: the API
  server refuses a loopback address in an EndpointSlice, and an FQDN slice needs a name with a
  dot, which nothing on this machine resolves to 127.0.0.1).

The add-on's own operator is not run: kubemaas renders the ScaledObject and the InterceptorRoute
itself (operator/kubemaas_operator/render/wake.py).

  python -m kubemaas_testbed.keda_http up STATE_DIR     the CRDs and both processes
  python -m kubemaas_testbed.keda_http down STATE_DIR   stop both (the CRDs stay)
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import binaries, cluster, gomodule
from .processes import ProcessTable, wait_until

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "third_party" / "keda-http-add-on"
NAMESPACE = "keda"
ADMIN_SERVICE = "keda-add-ons-http-interceptor-admin"
INTERCEPTOR, SCALER = "keda-http-interceptor", "keda-http-scaler"
CRDS = ("http.keda.sh_interceptorroutes", "http.keda.sh_httpscaledobjects")
PORTS = "keda-http-ports.json"


class HttpAddOnError(cluster.ClusterError):
    """The add-on could not be installed or started; the message says why."""


@dataclass(frozen=True)
class Ports:
    proxy: int  # the interceptor's proxy on 127.0.0.1: send requests here
    admin: int  # the interceptor's admin server (/queue, /readyz)
    scaler: int  # the external scaler's gRPC service (the ScaledObject's scalerAddress)

    @property
    def scaler_address(self) -> str:
        return f"127.0.0.1:{self.scaler}"

    @property
    def interceptor_address(self) -> str:
        return f"127.0.0.1:{self.proxy}"


def source_hash() -> str:
    """The first 8 hex digits of a hash of the vendored Go source, as hack/build-testbed computes
    it (`sha256sum` of the sorted files, hashed again): a local patch changes the binary's name."""
    files = sorted(f"./{p.relative_to(SOURCE)}" for p in SOURCE.rglob("*")
                   if p.is_file() and (p.suffix == ".go" or p.name in ("go.mod", "go.sum")))
    listing = "".join(f"{hashlib.sha256((SOURCE / f).read_bytes()).hexdigest()}  {f}\n"
                      for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:8]


def version() -> str:
    """The binaries' version: the vendored upstream's, and the source hash."""
    for line in (SOURCE / "UPSTREAM").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "version":
            return f"{value.strip()}-{source_hash()}"
    raise HttpAddOnError(f"no version in {SOURCE / 'UPSTREAM'}")


def binary(part: str) -> Path:
    return binaries.require(f"keda-http-{part}-{version()}",
                            "`hack/build-testbed --with-keda` (it builds KEDA and the HTTP "
                            "add-on's interceptor and scaler from third_party/keda-http-add-on)")


def built() -> bool:
    """Whether both binaries of the vendored source's version are in the binary cache."""
    return all(binaries.find(f"keda-http-{part}-{version()}") is not None
               for part in ("interceptor", "scaler"))


def crd_names() -> list[str]:
    return [f"{stem.split('_', 1)[1]}.{stem.split('_', 1)[0]}" for stem in CRDS]


def install_crds(kubeconfig: str | Path, timeout: float = 60.0) -> list[str]:
    files = gomodule.existing([SOURCE / "config" / "crd" / "bases" / f"{s}.yaml" for s in CRDS],
                              "KEDA HTTP add-on CRDs")
    return gomodule.apply_crds(kubeconfig, files, crd_names(), timeout)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def up(state: Path, kubeconfig: Path, timeout: float = 120.0) -> Ports:
    """Install the CRDs, start the interceptor and the scaler (once: running ones are kept);
    return their ports."""
    table = ProcessTable(state)
    record = state / PORTS
    running = {p.name for p in table.running()}
    if {INTERCEPTOR, SCALER} <= running and record.exists():
        return Ports(**json.loads(record.read_text()))
    down(state)
    interceptor_exe, scaler_exe = binary("interceptor"), binary("scaler")
    install_crds(kubeconfig)
    ports = Ports(proxy=cluster.free_port(), admin=cluster.free_port(),
                  scaler=cluster.free_port())
    common = {"KUBECONFIG": str(kubeconfig), "KEDA_HTTP_BIND_ADDRESS": "127.0.0.1",
              "OTEL_PROM_EXPORTER_ENABLED": "false"}
    proc = table.start(INTERCEPTOR, [str(interceptor_exe)], env={
        **common, "KEDA_HTTP_PROXY_PORT": str(ports.proxy),
        "KEDA_HTTP_ADMIN_PORT": str(ports.admin),
        # a ready pod's IP:port from the EndpointSlices, never the Service
        "KEDA_HTTP_DIRECT_POD_ROUTING": "true",
        "KEDA_HTTP_LOG_REQUESTS": "true"})
    wait_until(table, proc, lambda: _http_ok(f"http://127.0.0.1:{ports.admin}/readyz"), timeout,
               HttpAddOnError, f"the {INTERCEPTOR}", poll_s=0.3)
    proc = table.start(SCALER, [str(scaler_exe)], env={
        **common, "KEDA_HTTP_SCALER_PORT": str(ports.scaler),
        "KEDA_HTTP_SCALER_TARGET_ADMIN_NAMESPACE": NAMESPACE,
        "KEDA_HTTP_SCALER_TARGET_ADMIN_SERVICE": ADMIN_SERVICE,
        "KEDA_HTTP_SCALER_TARGET_ADMIN_DEPLOYMENT": INTERCEPTOR,
        "KEDA_HTTP_SCALER_TARGET_ADMIN_PORT": str(ports.admin),
        "KEDA_HTTP_SCALER_TARGET_ADMIN_ADDRESSES": "127.0.0.1"})
    wait_until(table, proc, lambda: _listening(ports.scaler), timeout, HttpAddOnError,
               f"the {SCALER}", poll_s=0.3)
    record.write_text(json.dumps(ports.__dict__))
    return ports


def pending(ports: Ports) -> dict[str, dict[str, int]]:
    """The interceptor's counts per route (NAMESPACE/NAME): requests in flight and seen."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ports.admin}/queue", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def down(state: Path) -> None:
    table = ProcessTable(state)
    table.stop(SCALER)
    table.stop(INTERCEPTOR)
    (state / PORTS).unlink(missing_ok=True)



if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    state_dir = Path(sys.argv[2])
    if sys.argv[1] == "up":
        print(json.dumps(up(state_dir, state_dir / "kubeconfig").__dict__))
    else:
        down(state_dir)
