"""Benchmark of the kubemaas operator on the local control plane (kwok nodes, real API server,
scheduler and controllers).

    .venv/bin/python bench/operator/bench_operator.py [--count 1000] [--samples 100]
        [--kubeconfig PATH]   # default: start a private testbed and stop it afterwards

Measures, with the operator running as a real process under its own ServiceAccount:
  1. apply -> Deployment written, and apply -> Ready (phase Ready seen in a watch), p50/p99,
     over `--samples` ModelDeployments created one after another;
  2. `--count` ModelDeployments created at once (16 client threads): time until every one has its
     Deployment, and until every one is Ready;
  3. the operator's peak RSS (VmHWM) over the whole run;
  4. API writes during idle resyncs: the operator's own counter of write requests, and the API
     server's apiserver_request_total for writes to ModelDeployments and their children
     (excluding the controllers' status subresource), across two resync periods with nothing
     changing;
  5. the floor the control plane sets on this machine: the same Deployments and Services the
     operator renders, created directly by the client (16 threads, no operator running), until all
     are available;
  0. first, with operators of their own, how soon it reacts (reactions.py): an impossible GPU
     request reported, a hand edit of a Deployment repaired, a peering failover
     (`--reactions 0` skips them).
Figures go to stdout and, as JSON, to bench/results/operator.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

from kubemaas_testbed.cluster import wait_established
from kubemaas_testbed.operator_process import OperatorProcess

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reactions

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "serving.kubemaas.io_modeldeployments.yaml"
RBAC = ROOT / "operator" / "kubemaas_operator" / "rbac" / "operator.yaml"
NS = "kubemaas-bench"
GROUP, VERSION, PLURAL = "serving.kubemaas.io", "v1alpha1", "modeldeployments"
BENCH_NODES = {"name": "bench-cpu", "count": 9, "cpu": "1000", "memory": "4Ti", "pods": 250,
               "labels": {"kubemaas.io/bench": "true"},
               "taints": [{"key": "kubemaas.io/bench", "value": "true",
                           "effect": "NoSchedule"}]}
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE"}
WATCHED = {"modeldeployments", "deployments", "services", "poddisruptionbudgets",
           "horizontalpodautoscalers"}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    from kubemaas_testbed.binaries import kubectl as kubectl_bin

    return subprocess.run([kubectl_bin(), f"--kubeconfig={kubeconfig}", *args], check=True,
                          capture_output=True, text=True, input=input).stdout


def model(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"uri": "s3://models/bench/model.onnx", "format": "onnx"},
                     "runtime": {"image": "ghcr.io/kubemaas/runtime:0.1.0",
                                 "resources": {"cpu": "10m", "memory": "16Mi"}},
                     "scheduling": {"nodeSelector": {"kubemaas.io/bench": "true"},
                                    "tolerations": [{"key": "kubemaas.io/bench",
                                                     "operator": "Exists"}]}}}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Watcher:
    """Times when each Deployment first appears and each ModelDeployment first turns Ready."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.deployment_at: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.cond = threading.Condition()
        self.stop = False
        for target in (self._deployments, self._models):
            threading.Thread(target=target, daemon=True).start()

    def _loop(self, list_fn: Any, on: Any, **kwargs: Any) -> None:
        while not self.stop:
            w = watch.Watch()
            try:
                for event in w.stream(list_fn, timeout_seconds=60, **kwargs):
                    on(event["object"])
            except Exception as err:  # a dropped watch: start again
                log(f"watch restarted: {err}")

    def _deployments(self) -> None:
        apps = client.AppsV1Api(self.api)

        def on(obj: Any) -> None:
            now = time.monotonic()
            with self.cond:
                self.deployment_at.setdefault(obj.metadata.name, now)
                self.cond.notify_all()
        self._loop(apps.list_namespaced_deployment, on, namespace=NS)

    def _models(self) -> None:
        custom = client.CustomObjectsApi(self.api)

        def on(obj: Any) -> None:
            now = time.monotonic()
            if (obj.get("status") or {}).get("phase") == "Ready":
                with self.cond:
                    self.ready_at.setdefault(obj["metadata"]["name"], now)
                    self.cond.notify_all()
        self._loop(custom.list_namespaced_custom_object, on, group=GROUP, version=VERSION,
                   namespace=NS, plural=PLURAL)

    def wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # short waits, so that ^C gets through
            with self.cond:
                if self.cond.wait_for(predicate, timeout=1.0):
                    return True
        return False


def direct_baseline(api: client.ApiClient, kubeconfig: Path, count: int) -> dict[str, float]:
    """The same children the operator renders, created straight from the client: the floor."""
    from kubemaas_operator.api import parse_spec
    from kubemaas_operator.render import RenderContext, render

    ns = f"{NS}-direct"
    with contextlib.suppress(subprocess.CalledProcessError):
        kubectl(kubeconfig, "create", "namespace", ns)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    pairs = []
    for i in range(count):
        children = render(parse_spec(model(f"direct-{i}")["spec"]), RenderContext(
            name=f"direct-{i}", namespace=ns, uid="0")).children
        for child in children:
            child["metadata"].pop("ownerReferences")
            child["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "bench"
        pairs.append((children[0], children[1]))
    log(f"direct: {count} Deployments + Services created by the client, no operator")
    t0 = time.monotonic()

    def create(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
        apps.create_namespaced_deployment(ns, pair[0])
        core.create_namespaced_service(ns, pair[1])
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(create, pairs))
    created = time.monotonic() - t0
    while True:
        deps = apps.list_namespaced_deployment(ns).items
        # Ready, as the operator's Ready condition counts: the rendered Deployments carry
        # minReadySeconds (the rollout settle window), which delays "available" by 5 s.
        if sum((d.status.ready_replicas or 0) >= 1 for d in deps) >= count:
            break
        if time.monotonic() - t0 > 900:
            break
        time.sleep(1)
    available = time.monotonic() - t0
    log(f"direct: created in {created:.1f} s, all Ready at {available:.1f} s")
    return {"created_s": created, "all_ready_s": available}


def apiserver_writes(kubeconfig: Path) -> int:
    """Write requests the API server counted for ModelDeployments and their children (the
    controllers' own status writes excluded)."""
    total = 0
    for line in kubectl(kubeconfig, "get", "--raw", "/metrics").splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if labels.get("verb") not in WRITE_VERBS or labels.get("resource") not in WATCHED:
            continue
        if labels.get("subresource") == "status" and labels.get("resource") != PLURAL:
            continue
        total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM: clean up (operator, private testbed) as for ^C


def _start_cluster(workdir: Path) -> tuple[Path, Any]:
    """A private testbed with the bench's kwok nodes: (kubeconfig, the testbed to stop)."""
    from kubemaas_testbed.cluster import Cluster

    topo = workdir / "topology.yaml"
    default = yaml.safe_load((ROOT / "hack" / "kubemaas_testbed" / "topologies" /
                              "default.yaml").read_text())
    default["nodes"].append(BENCH_NODES)
    topo.write_text(yaml.safe_dump(default))
    testbed = Cluster(workdir / "testbed")
    testbed.up(topology_name=str(topo), log=log)
    return testbed.kubeconfig, testbed


def _prepare(kubeconfig: Path) -> None:
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    wait_established(kubeconfig, "modeldeployments.serving.kubemaas.io")
    for ns in ("kubemaas-system", NS):
        with contextlib.suppress(subprocess.CalledProcessError):  # already there
            kubectl(kubeconfig, "create", "namespace", ns)
    kubectl(kubeconfig, "apply", "-f", str(RBAC))


def _spread(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99),
            "mean": statistics.mean(values)}


def _measure_latency(custom: Any, watcher: Watcher, samples: int) -> dict[str, Any]:
    """One ModelDeployment at a time: apply -> its Deployment, apply -> Ready."""
    log(f"latency: {samples} ModelDeployments one after another")
    to_dep, to_ready = [], []
    for i in range(samples):
        name = f"lat-{i}"
        t0 = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, model(name))
        if not watcher.wait(lambda n=name: n in watcher.ready_at, timeout=60):
            raise RuntimeError(f"{name} did not become Ready")
        to_dep.append((watcher.deployment_at[name] - t0) * 1000)
        to_ready.append((watcher.ready_at[name] - t0) * 1000)
    dep, ready = _spread(to_dep), _spread(to_ready)
    log(f"apply->Deployment p50 {dep['p50']:.0f} ms, p99 {dep['p99']:.0f} ms; "
        f"apply->Ready p50 {ready['p50']:.0f} ms, p99 {ready['p99']:.0f} ms")
    for i in range(samples):
        custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, f"lat-{i}")
    time.sleep(5)
    return {"apply_to_deployment_ms": dep, "apply_to_ready_ms": ready}


def _measure_burst(custom: Any, watcher: Watcher, count: int) -> dict[str, Any]:
    """``count`` ModelDeployments created at once: when all have Deployments, when all are
    Ready."""
    log(f"burst: {count} ModelDeployments at once")
    names = [f"burst-{i}" for i in range(count)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda n: custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, model(n)), names))
    created = time.monotonic() - t0
    all_deps = watcher.wait(lambda: all(n in watcher.deployment_at for n in names), 600)
    deps_at = time.monotonic() - t0
    all_ready = watcher.wait(lambda: all(n in watcher.ready_at for n in names), 600)
    ready_at = time.monotonic() - t0
    burst = {"created_s": created, "all_deployments_s": deps_at, "all_ready_s": ready_at,
             "complete": all_deps and all_ready,
             "ready": sum(n in watcher.ready_at for n in names)}
    log(f"burst: created in {created:.1f} s, all Deployments at {deps_at:.1f} s, "
        f"all Ready at {ready_at:.1f} s ({burst['ready']}/{count})")
    return burst


def _measure_idle(op: OperatorProcess, kubeconfig: Path, resync: float) -> dict[str, Any]:
    """Nothing changes for two resync periods: what the operator and the API server write."""
    settle = 15.0
    log(f"idle: settling {settle:.0f} s, then two resyncs ({2 * resync:.0f} s)")
    time.sleep(settle)
    w0, a0 = op.writes(), apiserver_writes(kubeconfig)
    time.sleep(2 * resync + 11)  # + kopf's 10 s probe cache
    w1, a1 = op.writes(), apiserver_writes(kubeconfig)
    log(f"idle: operator writes {w1 - w0}, API server writes to models/children {a1 - a0}")
    return {"operator_writes": w1 - w0, "apiserver_writes": a1 - a0, "seconds": 2 * resync + 11}


def _operator_usage(op: OperatorProcess) -> dict[str, Any]:
    mem = op.memory()
    usage = {"operator_rss_mb": {"peak": mem["VmHWM"] / 1024, "end": mem["VmRSS"] / 1024},
             "operator_writes_total": op.writes(), "operator_cpu_s": op.cpu_seconds()}
    log(f"operator RSS peak {mem['VmHWM'] / 1024:.0f} MB, now {mem['VmRSS'] / 1024:.0f} MB; "
        f"CPU {usage['operator_cpu_s']:.0f} s")
    return usage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--resync", type=float, default=30.0,
                        help="the operator's KUBEMAAS_OPERATOR_RESYNC_S for this run")
    parser.add_argument("--reactions", type=int, default=5,
                        help="samples of each reaction time (reactions.py); 0 skips them")
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="use this cluster instead of starting a private testbed")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)

    workdir = Path(tempfile.mkdtemp(prefix="kubemaas-bench-"))
    testbed = None
    if args.kubeconfig is None:
        kubeconfig, testbed = _start_cluster(workdir)
    else:
        kubeconfig = args.kubeconfig
    results: dict[str, Any] = {"count": args.count, "samples": args.samples,
                               "resync_s": args.resync}
    op = None
    try:
        _prepare(kubeconfig)
        if args.reactions > 0:
            log(f"reactions: {args.reactions} samples each")
            results["reactions"] = reactions.measure(kubeconfig, workdir, args.reactions)
        op = OperatorProcess(kubeconfig, workdir, {"KUBEMAAS_OPERATOR_RESYNC_S": str(args.resync)})
        api = config.new_client_from_config(str(kubeconfig))
        api.configuration.connection_pool_maxsize = 32  # type: ignore[attr-defined]
        custom = client.CustomObjectsApi(api)
        watcher = Watcher(api)
        time.sleep(2)
        results.update(_measure_latency(custom, watcher, args.samples))
        results["burst"] = _measure_burst(custom, watcher, args.count)
        results["idle"] = _measure_idle(op, kubeconfig, args.resync)
        results.update(_operator_usage(op))
        watcher.stop = True
        op.stop()
        op = None
        results["direct"] = direct_baseline(api, kubeconfig, args.count)
        results["load_average"] = os.getloadavg()
    finally:
        if op is not None:
            op.stop()
        if testbed is not None:
            testbed.down()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "operator.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    log(f"operator log: {workdir / 'operator.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
