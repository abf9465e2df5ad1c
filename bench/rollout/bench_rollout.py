"""Benchmark of kubemaas rollouts on the local control plane (kwok GPU nodes, real API server,
scheduler and controllers; the operator as a real process under its own ServiceAccount).

    .venv/bin/python bench/rollout/bench_rollout.py [--models 100] [--replicas 2]
        [--sizes 1,10,100] [--nodes 40]

A private testbed with `--nodes` H100 nodes (8 GPUs each) runs `--models` ModelDeployments of
`--replicas` x 1 H100. For each mode and each size N, the image of N models is changed at once
(one apply each, from 16 client threads) and the clock runs from the first apply until every pod
of the N new revisions is Ready and no pod of an old revision is left:

  free  the cluster has free GPUs for a surge (the operator picks Surge);
  none  filler pods take every free GPU first (the operator picks Replace, maxUnavailable 1).

Then, with the operator stopped, the same image changes are made straight to the Deployments
(the floor the control plane sets on this machine). Figures go to stdout and, as JSON, to
bench/results/rollout.json.

First, `--rollbacks` (a list of kwok failure modes, `kubemaas.io/fake-failure`): for each, a model
of 2 replicas with progressDeadlineSeconds 10 gets the failing label in spec.podMetadata, and the
clock runs from that apply until its status says RolledBack (tests/cluster/test_rollout.py checks
the rollback itself; the target is the deadline + 10 s). `--only-rollbacks` stops there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from kubemaas_testbed.cluster import wait_established
from kubemaas_testbed.operator_process import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "serving.kubemaas.io_modeldeployments.yaml"
RBAC = ROOT / "operator" / "kubemaas_operator" / "rbac" / "operator.yaml"
NS = "kubemaas-bench"
GROUP, VERSION, PLURAL = "serving.kubemaas.io", "v1alpha1", "modeldeployments"
H100 = "NVIDIA-H100-80GB-HBM3"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    from kubemaas_testbed.binaries import kubectl as kubectl_bin

    return subprocess.run([kubectl_bin(), f"--kubeconfig={kubeconfig}", *args], input=input,
                          capture_output=True, text=True, check=True).stdout


def image(tag: int) -> str:
    return f"ghcr.io/kubemaas/runtime:0.{tag}.0"


def model(name: str, replicas: int, tag: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"uri": "s3://models/m.onnx", "format": "onnx"},
                     "runtime": {"image": image(tag)},
                     "replicas": replicas, "gpu": {"count": 1, "products": [H100]}}}


def pods_by_model(core: client.CoreV1Api) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for p in core.list_namespaced_pod(NS).items:
        instance = (p.metadata.labels or {}).get("app.kubernetes.io/instance")
        if instance:
            out.setdefault(instance, []).append(p)
    return out


def done(pods: list[Any], image: str, replicas: int) -> bool:
    if len(pods) != replicas:
        return False
    for p in pods:
        if p.metadata.deletion_timestamp is not None or p.spec.containers[0].image != image:
            return False
        if not any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []):
            return False
    return True


def wait_all(core: client.CoreV1Api, wanted: dict[str, str], replicas: int,
             timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        pods = pods_by_model(core)
        if all(done(pods.get(name, []), image, replicas) for name, image in wanted.items()):
            return time.monotonic()
        time.sleep(0.1)
    return None


def fill(core: client.CoreV1Api, kubeconfig: Path) -> int:
    """Filler pods on every free GPU of the H100 nodes; returns how many GPUs they took."""
    nodes = {n.metadata.name: int(n.status.allocatable.get("nvidia.com/gpu", "0"))
             for n in core.list_node().items
             if (n.metadata.labels or {}).get("nvidia.com/gpu.product") == H100}
    for p in core.list_pod_for_all_namespaces().items:
        if p.spec.node_name in nodes and p.status.phase not in ("Succeeded", "Failed"):
            for c in p.spec.containers:
                nodes[p.spec.node_name] -= int(((c.resources and c.resources.requests) or {}).get(
                    "nvidia.com/gpu", "0"))
    docs = [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": f"filler-{node}", "namespace": NS},
             "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                      "containers": [{"name": "c", "image": "busybox", "resources": {
                          "requests": {"nvidia.com/gpu": str(free)},
                          "limits": {"nvidia.com/gpu": str(free)}}}]}}
            for node, free in sorted(nodes.items()) if free > 0]
    if docs:
        kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump_all(docs))
    return sum(free for free in nodes.values() if free > 0)


def settled(custom: client.CustomObjectsApi, names: list[str], timeout: float) -> None:
    """Every model has a current revision and nothing rolling (past the 5 s settle window)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
        ro = {m["metadata"]["name"]: (m.get("status") or {}).get("rollout") or {} for m in items}
        if all(ro.get(n, {}).get("current") and "update" not in ro.get(n, {}) for n in names):
            return
        time.sleep(0.5)
    raise RuntimeError("the models did not settle on a current revision")


def floor(api: client.ApiClient, core: client.CoreV1Api, kubeconfig: Path, names: list[str],
          sizes: list[int], replicas: int, tags: dict[str, int],
          timeout: float) -> list[dict[str, Any]]:
    """The same image changes made straight to the Deployments, the operator stopped: what the
    control plane alone (Deployment controller, scheduler, kwok) takes on this machine. First on
    the full cluster (maxSurge 0, maxUnavailable 1), then with the filler pods gone (maxSurge 1,
    maxUnavailable 0), as the operator chose."""
    apps = client.AppsV1Api(api)
    out = []
    for mode, surge, unavailable in (("none", 0, 1), ("free", 1, 0)):
        if mode == "free":
            kubectl(kubeconfig, "-n", NS, "delete", "pods", "-l", "!app.kubernetes.io/instance",
                    "--wait=true")
        for n in sizes:
            changed = names[:n]
            for name in changed:
                tags[name] += 1
            wanted = {name: image(tags[name]) for name in changed}

            def patch(name: str, surge: int = surge, unavailable: int = unavailable,
                      wanted: dict[str, str] = wanted) -> None:
                apps.patch_namespaced_deployment(name, NS, {"spec": {
                    "strategy": {"rollingUpdate": {"maxSurge": surge,
                                                   "maxUnavailable": unavailable}},
                    "template": {"spec": {"containers": [
                        {"name": "runtime", "image": wanted[name]}]}}}})
            t0 = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(patch, changed))
            t1 = wait_all(core, wanted, replicas, timeout)
            seconds = None if t1 is None else round(t1 - t0, 2)
            log(f"floor {mode:>4}: {n:>3} Deployments changed directly -> all new pods Ready in "
                f"{seconds} s")
            out.append({"mode": mode, "changed": n, "seconds": seconds})
            time.sleep(3)
    return out


ROLLBACK_NS = "kubemaas-bench-rollback"
ROLLBACK_DEADLINE_S = 10


def rollbacks(custom: client.CustomObjectsApi, failures: list[str],
              timeout: float) -> list[dict[str, Any]]:
    """Seconds from the failing spec's apply to RolledBack in the status, per failure mode."""
    out = []
    for i, failure in enumerate(failures):
        name = f"rb-{i}"
        body = model(name, 2, 1)
        body["metadata"]["namespace"] = ROLLBACK_NS
        body["spec"]["rollout"] = {"progressDeadlineSeconds": ROLLBACK_DEADLINE_S}
        custom.create_namespaced_custom_object(GROUP, VERSION, ROLLBACK_NS, PLURAL, body)

        def st(n: str = name) -> dict[str, Any]:
            md = custom.get_namespaced_custom_object(GROUP, VERSION, ROLLBACK_NS, PLURAL, n)
            return dict(md.get("status") or {})
        deadline = time.monotonic() + timeout
        while st().get("phase") != "Ready" or "update" in (st().get("rollout") or {}):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become Ready")
            time.sleep(0.2)
        t0 = time.monotonic()
        custom.patch_namespaced_custom_object(GROUP, VERSION, ROLLBACK_NS, PLURAL, name, {
            "spec": {"podMetadata": {"labels": {"kubemaas.io/fake-failure": failure}}}})
        while not str(st().get("reason", "")).startswith("RolledBack"):
            if time.monotonic() > deadline + timeout:
                raise RuntimeError(f"{name} ({failure}) was not rolled back")
            time.sleep(0.05)
        took = time.monotonic() - t0
        target = ROLLBACK_DEADLINE_S + 10
        log(f"rollback of {failure}: {took:.1f} s after the failing spec (target <= {target} s: "
            f"{'met' if took <= target else 'NOT met'})")
        out.append({"failure": failure, "seconds": round(took, 2), "target_s": target})
        custom.delete_namespaced_custom_object(GROUP, VERSION, ROLLBACK_NS, PLURAL, name)
    return out


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--nodes", type=int, default=40, help="H100 nodes, 8 GPUs each")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the control-plane floor (direct Deployment changes)")
    parser.add_argument("--rollbacks", default="crash,image-pull,not-ready,ErrImagePull,failed",
                        help="failure modes to time a rollback for first ('' for none)")
    parser.add_argument("--only-rollbacks", action="store_true",
                        help="time the rollbacks, then stop")
    parser.add_argument("--modes", default="free,none",
                        help="which of free,none to run, in that order (default both)")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    asked = set(args.modes.split(","))
    args.modes = [m for m in ("free", "none") if m in asked]
    if not args.modes or asked - {"free", "none"}:
        parser.error("--modes takes free, none or free,none")
    if max(args.sizes) > args.models and not args.only_rollbacks:  # no sizes are run then
        parser.error("a size exceeds --models")
    return args


def _start_cluster(nodes: int, workdir: Path) -> Any:
    """A private testbed of ``nodes`` kwok H100 nodes (8 GPUs each) and one CPU node."""
    from kubemaas_testbed.cluster import Cluster

    topo = workdir / "topology.yaml"
    topo.write_text(yaml.safe_dump({"nodes": [
        {"name": "h100", "count": nodes, "cpu": "208", "memory": "2Ti", "pods": 110,
         "gpu": {"product": H100, "memoryMiB": 81559, "count": 8}},
        {"name": "cpu", "count": 1, "cpu": "32", "memory": "128Gi"}]}))
    testbed = Cluster(workdir / "testbed")
    testbed.up(topology_name=str(topo), log=log)
    return testbed


def _prepare(kubeconfig: Path) -> None:
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(CRD))
    wait_established(kubeconfig, "modeldeployments.serving.kubemaas.io")
    for ns in ("kubemaas-system", NS, ROLLBACK_NS):
        kubectl(kubeconfig, "create", "namespace", ns)
    kubectl(kubeconfig, "apply", "-f", str(RBAC))


class _Fleet:
    """The benchmark's ModelDeployments: each one's image tag, applied 16 at a time."""

    def __init__(self, custom: Any, names: list[str], replicas: int) -> None:
        self.custom, self.names, self.replicas = custom, names, replicas
        self.tags = dict.fromkeys(names, 1)

    def image(self, name: str) -> str:
        return image(self.tags[name])

    def put(self, name: str) -> None:
        body = model(name, self.replicas, self.tags[name])
        with contextlib.suppress(client.ApiException):
            self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
            return
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, name,
            {"spec": {"runtime": {"image": body["spec"]["runtime"]["image"]}}})

    def put_all(self, names: list[str]) -> None:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(self.put, names))

    def outcomes(self, names: list[str]) -> Counter[str]:
        """How each rollout went, from the last entry of its history."""
        counted: Counter[str] = Counter()
        for name in names:
            md = self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
            last = (((md.get("status") or {}).get("rollout") or {}).get("history") or [{}])[-1]
            counted[f"{last.get('outcome')}: {last.get('message')}"] += 1
        return counted


def _change_at_once(fleet: _Fleet, core: Any, mode: str, n: int, timeout: float
                    ) -> dict[str, Any]:
    """Change the first ``n`` models' image at once; how long until all new pods are Ready,
    and how each rolled out."""
    changed = fleet.names[:n]
    for name in changed:
        fleet.tags[name] += 1
    t0 = time.monotonic()
    fleet.put_all(changed)
    t1 = wait_all(core, {name: fleet.image(name) for name in changed}, fleet.replicas, timeout)
    settled(fleet.custom, fleet.names, timeout)
    strategies = fleet.outcomes(changed)
    seconds = None if t1 is None else round(t1 - t0, 2)
    how = {kind: sum(c for text, c in strategies.items() if f"({kind} rollout)" in text)
           for kind in ("surge", "replace")}
    log(f"{mode:>4}: {n:>3} models changed at once -> all new pods Ready in "
        f"{seconds} s; surged {how['surge']}, replaced {how['replace']} of {n}; "
        f"outcomes: {dict(strategies)}")
    return {"mode": mode, "changed": n, "seconds": seconds, "surged": how["surge"],
            "replaced": how["replace"], "outcomes": dict(strategies)}


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    args = _parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kubemaas-bench-rollout-"))
    testbed = _start_cluster(args.nodes, workdir)
    kubeconfig = testbed.kubeconfig
    results: dict[str, Any] = {"models": args.models, "replicas": args.replicas,
                               "h100_gpus": args.nodes * 8, "runs": [],
                               "loadavg_before": os.getloadavg(),
                               "cpus": os.cpu_count()}
    op = None
    try:
        _prepare(kubeconfig)
        op = OperatorProcess(kubeconfig, workdir)
        api = config.new_client_from_config(str(kubeconfig))
        api.configuration.connection_pool_maxsize = 32  # type: ignore[attr-defined]
        custom = client.CustomObjectsApi(api)
        core = client.CoreV1Api(api)
        failures = [f for f in args.rollbacks.split(",") if f]
        results["rollbacks"] = rollbacks(custom, failures, args.timeout)
        if args.only_rollbacks:
            return _write(results)
        fleet = _Fleet(custom, [f"m{i:03d}" for i in range(args.models)], args.replicas)
        fleet.put_all(fleet.names)
        if wait_all(core, {n: fleet.image(n) for n in fleet.names}, args.replicas,
                    args.timeout) is None:
            raise RuntimeError("the models did not become Ready")
        log(f"{args.models} models x {args.replicas} replicas Ready")
        settled(custom, fleet.names, args.timeout)
        for mode in args.modes:
            if mode == "none":
                took = fill(core, kubeconfig)
                time.sleep(3)
                log(f"filler pods took the {took} free H100 GPUs")
            for n in args.sizes:
                results["runs"].append(_change_at_once(fleet, core, mode, n, args.timeout))
        if not args.no_floor:
            op.stop()
            op = None
            results["floor"] = floor(api, core, kubeconfig, fleet.names, args.sizes,
                                     args.replicas, fleet.tags, args.timeout)
    finally:
        if op is not None:
            op.stop()
        testbed.down()
    return _write(results)


def _write(results: dict[str, Any]) -> int:
    results["loadavg_after"] = os.getloadavg()
    out = ROOT / "bench" / "results" / "rollout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
