"""Prometheus on a testbed cluster: the server from its Go module github.com/prometheus/prometheus
(built by `hack/build-testbed --with-prometheus` into the binary cache, with only the Kubernetes
service discovery compiled in), run as a local process on 127.0.0.1. It is where KEDA's
Prometheus scaler reads the runtimes' gauges (docs/autoscaling.md).

What it scrapes, and nothing else: the kubemaas runtime pods of ONE real node (the kubelet and
containerd of node.py, whose pods have addresses on the project's own bridge). Kubernetes service
discovery (role pod) asks the API server only for pods with `spec.nodeName=<the real node>` and
the runtime's labels; a relabelling rule then keeps only targets whose address lies in that
node's bridge subnet. kwok's pods (addresses that exist nowhere) and Service ClusterIPs are never
targets. A scrape gives every series the labels a ServiceMonitor of the model's Service would
(`namespace`, `service` = the model's name, `pod`), so the operator's rendered queries read them
unchanged.

  python -m kubemaas_testbed.prometheus up STATE_DIR NODE SUBNET   start it (prints its URL)
  python -m kubemaas_testbed.prometheus down STATE_DIR             stop it
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import binaries, cluster
from .processes import ProcessTable, wait_until

PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
PROMETHEUS_VERSION = "v0.316.0"  # Prometheus 3.16.0
BINARY = f"prometheus-{PROMETHEUS_VERSION}"
PROCESS = "prometheus"
JOB = "kubemaas-runtime"
# The runtime's pods (the operator's labels) and the port its metrics are on.
POD_LABELS = "app.kubernetes.io/name=kubemaas-runtime,app.kubernetes.io/managed-by=kubemaas"
PORT_NAME = "http"
SCRAPE_INTERVAL_S = 2


class PrometheusError(cluster.ClusterError):
    """Prometheus could not be started; the message says why."""


@dataclass(frozen=True)
class Prometheus:
    url: str  # http://127.0.0.1:PORT
    pid: int


def binary() -> Path:
    return binaries.require(BINARY, "`hack/build-testbed --with-prometheus`")


def subnet_regex(subnet: ipaddress.IPv4Network) -> str:
    """A regular expression (RE2, anchored by Prometheus) for `IP:PORT` with the IP in
    `subnet`, for a /8, /16 or /24 (a real node's bridge is a /24)."""
    if subnet.prefixlen not in (8, 16, 24):
        raise ValueError(f"{subnet}: only /8, /16 or /24 subnets are supported")
    fixed = str(subnet.network_address).split(".")[: subnet.prefixlen // 8]
    octets = [re.escape(o) for o in fixed] + [r"\d{1,3}"] * (4 - len(fixed))
    return r"\.".join(octets) + r":\d+"


def config(kubeconfig: Path, node_name: str | None, subnet: ipaddress.IPv4Network | None,
           interval_s: int = SCRAPE_INTERVAL_S, static_targets: Sequence[str] = (),
           query_log: Path | None = None) -> dict[str, Any]:
    """PURE: the configuration that scrapes the runtime pods of the real node `node_name` (and
    only addresses in `subnet`, its bridge), and `static_targets` (127.0.0.1:PORT only: an
    exporter of a test's own, whose series keep their labels)."""
    interval = f"{interval_s}s"
    glob: dict[str, Any] = {"scrape_interval": interval, "scrape_timeout": interval,
                            "evaluation_interval": interval}
    if query_log is not None:
        glob["query_log_file"] = str(query_log)
    jobs: list[dict[str, Any]] = []
    if node_name is not None:
        if subnet is None:
            raise ValueError("a real node's pods are scraped only within its bridge subnet")
        jobs.append(_pods_job(kubeconfig, node_name, subnet))
    for target in static_targets:
        host, _, port = target.rpartition(":")
        if host != "127.0.0.1" or not port.isdigit():
            raise ValueError(f"{target}: a static target must be 127.0.0.1:PORT")
    if static_targets:
        jobs.append({"job_name": "static", "honor_labels": True,
                     "static_configs": [{"targets": list(static_targets)}]})
    return {"global": glob, "scrape_configs": jobs}


def _pods_job(kubeconfig: Path, node_name: str, subnet: ipaddress.IPv4Network) -> dict[str, Any]:
    return {
        "job_name": JOB,
        "metrics_path": "/metrics",
        "scheme": "http",
        "kubernetes_sd_configs": [{
            "role": "pod",
            "kubeconfig_file": str(kubeconfig),
            # The API server filters: only this node's pods, only the runtime's.
            "selectors": [{"role": "pod", "field": f"spec.nodeName={node_name}",
                           "label": POD_LABELS}],
        }],
        "relabel_configs": [
            # Network rule: a target outside the node's bridge is dropped, whatever the API
            # server said (kwok's pod addresses and ClusterIPs never get here).
            {"source_labels": ["__address__"], "regex": subnet_regex(subnet),
             "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"],
             "regex": PORT_NAME, "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running",
             "action": "keep"},
            # The labels a ServiceMonitor of the model's Service gives (the Service is named
            # after the model, app.kubernetes.io/instance).
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
             "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
        ],
    }


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def up(state: Path, kubeconfig: Path, node_name: str | None = None,
       subnet: ipaddress.IPv4Network | None = None, static_targets: Sequence[str] = (),
       timeout: float = 120.0) -> Prometheus:
    """Start Prometheus for the real node `node_name` and/or `static_targets` (a running one is
    stopped first: what it scrapes is in its configuration). Every query it answers is logged
    to STATE/prometheus/queries.log (query_log)."""
    exe = binary()
    table = ProcessTable(state)
    table.stop(PROCESS)
    home = state / "prometheus"
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    conf = home / "prometheus.yml"
    conf.write_text(yaml.safe_dump(config(kubeconfig, node_name, subnet,
                                          static_targets=static_targets,
                                          query_log=query_log(state)), sort_keys=False))
    port = cluster.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = table.start(PROCESS, [
        str(exe),
        f"--config.file={conf}",
        f"--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=2h",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ])
    (home / "url").write_text(url)
    wait_until(table, proc, lambda: _ready(url), timeout, PrometheusError, "Prometheus")
    return Prometheus(url, proc.pid)


def down(state: Path) -> None:
    ProcessTable(state).stop(PROCESS)


def query_log(state: Path) -> Path:
    return state / "prometheus" / "queries.log"


def logged_queries(state: Path) -> list[str]:
    """The PromQL of every query Prometheus answered (its query log, one JSON object a line)."""
    path = query_log(state)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(str(json.loads(line)["params"]["query"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def active_targets(url: str) -> list[dict[str, Any]]:
    """The targets Prometheus scrapes now (its /api/v1/targets)."""
    out = _get(f"{url}/api/v1/targets?state=active")
    return list(out["data"]["activeTargets"])


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    out = _get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    if out.get("status") != "success":
        raise PrometheusError(f"query {promql!r} failed: {out}")
    return list(out["data"]["result"])



if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "down" and len(sys.argv) == 3:
        down(Path(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "up":
        state_dir = Path(sys.argv[2])
        print(up(state_dir, state_dir / "kubeconfig", sys.argv[3],
                 ipaddress.IPv4Network(sys.argv[4])).url)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
