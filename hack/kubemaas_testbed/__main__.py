"""hack/cluster: up | down | status | env | nodes | gateway-api | inference-extension | keda — the
local control plane."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import binaries
from .cluster import Cluster, ClusterError, default_state_dir
from .node import NodeError, RealNode


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)

    cluster = Cluster(Path(args.state) if args.state else default_state_dir())
    try:
        if args.verb == "up":
            cluster.up(args.topology, timeout=args.timeout,
                       log=lambda msg: print(msg, file=sys.stderr), real_node=args.real_node)
            print(f"export KUBECONFIG={cluster.kubeconfig}")
        elif args.verb == "down":
            cluster.down()
        elif args.verb == "status":
            status = cluster.status()
            print(json.dumps(status, indent=2))
            return 0 if status["up"] else 1
        elif args.verb == "env":
            print(f"export KUBECONFIG={cluster.kubeconfig}")
        elif args.verb == "real-node":
            real_node = RealNode(cluster.state)
            if args.action == "up":
                if not cluster.is_up():
                    raise ClusterError("the testbed is not up: hack/cluster up [--real-node]")
                real_node.up(cluster.server, log=lambda msg: print(msg, file=sys.stderr))
            else:
                real_node.down(delete_node_object=cluster.is_up())
        elif args.verb == "binaries":
            print(binaries.ensure().kube_apiserver.parent)
        elif args.verb == "gateway-api":
            if not cluster.is_up():
                raise ClusterError("the testbed is not up: hack/cluster up")
            from . import gateway

            for crd in gateway.install(cluster.kubeconfig):
                print(f"installed {crd}")
        elif args.verb == "inference-extension":
            if not cluster.is_up():
                raise ClusterError("the testbed is not up: hack/cluster up")
            from . import inference_extension

            for crd in inference_extension.install(cluster.kubeconfig):
                print(f"installed {crd}")
        elif args.verb == "keda":
            from . import keda, keda_http

            if args.action == "down":
                keda_http.down(cluster.state)
                keda.down(cluster.state)
            else:
                if not cluster.is_up():
                    raise ClusterError("the testbed is not up: hack/cluster up")
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
    except (ClusterError, NodeError, binaries.MissingBinaryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
