"""hack/cluster: up | real-node | down | status | env | binaries | gateway-api |
inference-extension | keda — the local control plane."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from . import binaries
from .cluster import Cluster, ClusterError, default_state_dir
from .node import NodeError, RealNode


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hack/cluster", description=__doc__)
    parser.add_argument("--state", type=str, default=None,
                        help="state directory (default $KUBEMAAS_STATE_DIR or .state/cluster)")
    sub = parser.add_subparsers(dest="verb", required=True)
    up = sub.add_parser("up", help="build what is missing, start everything, create the nodes")
    up.add_argument("--topology", default="default", help="a topology name or YAML file")
    up.add_argument("--timeout", type=float, default=120.0)
    up.add_argument("--real-node", action="store_true",
                    help="also start a real node (containerd + kubelet; docs/real-node.md)")
    real = sub.add_parser("real-node", help="start or stop only the real node")
    real.add_argument("action", choices=["up", "down"])
    sub.add_parser("down", help="stop exactly what `up` started and remove the state")
    sub.add_parser("status", help="print what runs, as JSON; exit 1 if not up")
    sub.add_parser("env", help="print `export KUBECONFIG=...` for a shell to eval")
    sub.add_parser("binaries", help="print where the binaries are, building missing ones")
    sub.add_parser("gateway-api", help="install the Gateway API's standard CRDs (Gateway, "
                   "HTTPRoute, ...) from the Go module cache; idempotent")
    sub.add_parser("inference-extension", help="install the Gateway API Inference Extension's "
                   "InferencePool CRD from the Go module cache; idempotent")
    keda_cmd = sub.add_parser("keda", help="install KEDA's CRDs from its Go module and start "
                              "its operator, its metrics API server and its HTTP add-on's "
                              "interceptor and scaler (built by hack/build-testbed --with-keda); "
                              "`keda down` stops them")
    keda_cmd.add_argument("action", nargs="?", choices=["up", "down"], default="up")
    return parser


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _require_up(cluster: Cluster, how: str = "hack/cluster up") -> None:
    if not cluster.is_up():
        raise ClusterError(f"the testbed is not up: {how}")


def _up(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.up(args.topology, timeout=args.timeout, log=_log, real_node=args.real_node)
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _down(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.down()
    return 0


def _status(cluster: Cluster, args: argparse.Namespace) -> int:
    status = cluster.status()
    print(json.dumps(status, indent=2))
    return 0 if status["up"] else 1


def _real_node(cluster: Cluster, args: argparse.Namespace) -> int:
    real_node = RealNode(cluster.state)
    if args.action == "up":
        _require_up(cluster, "hack/cluster up [--real-node]")
        real_node.up(cluster.server, log=_log)
    else:
        real_node.down(delete_node_object=cluster.is_up())
    return 0


def _crds(cluster: Cluster, args: argparse.Namespace) -> int:
    _require_up(cluster)
    from . import gateway, inference_extension

    installer = gateway if args.verb == "gateway-api" else inference_extension
    for crd in installer.install(cluster.kubeconfig):
        print(f"installed {crd}")
    return 0


def _keda(cluster: Cluster, args: argparse.Namespace) -> int:
    from . import keda, keda_http

    if args.action == "down":
        keda_http.down(cluster.state)
        keda.down(cluster.state)
        return 0
    _require_up(cluster)
    pid = keda.up(cluster.state, cluster.kubeconfig)
    print(f"KEDA operator running (pid {pid}) and its metrics API server "
          f"({keda.APISERVICE} Available); logs: "
          f"{cluster.state / 'logs' / keda.PROCESS}.log, "
          f"{cluster.state / 'logs' / keda.ADAPTER_PROCESS}.log")
    ports = keda_http.up(cluster.state, cluster.kubeconfig)
    print(f"KEDA HTTP add-on: interceptor on {ports.interceptor_address} (send "
          f"requests there with Host NAME.NAMESPACE), scaler on "
          f"{ports.scaler_address}; for the operator: "
          f"KUBEMAAS_OPERATOR_HTTP_SCALER={ports.scaler_address} "
          f"KUBEMAAS_OPERATOR_HTTP_INTERCEPTOR={ports.interceptor_address}")
    return 0


def _print(line: Callable[[Cluster], object]) -> Callable[[Cluster, argparse.Namespace], int]:
    def verb(cluster: Cluster, args: argparse.Namespace) -> int:
        print(line(cluster))
        return 0
    return verb


def _env(cluster: Cluster, args: argparse.Namespace) -> int:
    """`eval "$(hack/cluster env)"`: a kubeconfig only for a testbed that is up (a stale one
    would point kubectl at nothing, or at whatever took the port since)."""
    _require_up(cluster)
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


VERBS: dict[str, Callable[[Cluster, argparse.Namespace], int]] = {
    "up": _up,
    "down": _down,
    "status": _status,
    "env": _env,
    "real-node": _real_node,
    "binaries": _print(lambda cluster: binaries.ensure().kube_apiserver.parent),
    "gateway-api": _crds,
    "inference-extension": _crds,
    "keda": _keda,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cluster = Cluster(Path(args.state) if args.state else default_state_dir())
    try:
        return VERBS[args.verb](cluster, args)
    except (ClusterError, NodeError, binaries.MissingBinaryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
