"""How soon the operator reacts, measured where the tests only check that it does:

1. an impossible GPU request reported: apply -> `InsufficientGPU` in the status (target < 5 s;
   tests/cluster/test_operator.py checks the report itself);
2. drift repaired: `kubectl set image` on the model's Deployment -> the operator's image back
   (docs/operator.md: "within a second", on the Deployment's own watch event; the operator runs
   with a long resync here, so the periodic drift check plays no part);
3. peering failover: the active replica killed with SIGKILL -> the standby logs that it resumes
   (bound: the peering lifetime + 5 s; tests/cluster/test_operator_peering.py checks the
   takeover itself).

    .venv/bin/python bench/operator/reactions.py [--samples 5] [--kubeconfig PATH]

bench_operator.py runs the same measurements (with its own cluster) before its other sections.
Figures go to stdout (median and worst of each) and, as JSON, to bench/results/reactions.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kubemaas_testbed.cluster import wait_established
from kubemaas_testbed.operator_process import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "serving.kubemaas.io_modeldeployments.yaml"
RBAC = ROOT / "operator" / "kubemaas_operator" / "rbac" / "operator.yaml"
PEERING_CRD = (ROOT / "operator" / "kubemaas_operator" / "peering"
               / "kopf.dev_clusterkopfpeerings.yaml")
NS = "kubemaas-bench-reactions"
H100 = "NVIDIA-H100-80GB-HBM3"
IMAGE = "ghcr.io/kubemaas/runtime:0.1.0"
TARGETS = {"insufficient_gpu_s": 5.0, "drift_repair_s": 1.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    from kubemaas_testbed.binaries import kubectl as kubectl_bin

    return subprocess.run([kubectl_bin(), f"--kubeconfig={kubeconfig}", *args], input=input,
                          capture_output=True, text=True, check=True).stdout


def model(name: str, **spec: Any) -> str:
    body = {"model": {"uri": "s3://models/m.onnx", "format": "onnx"},
            "runtime": {"image": IMAGE}, **spec}
    return yaml.safe_dump({"apiVersion": "serving.kubemaas.io/v1alpha1",
                           "kind": "ModelDeployment",
                           "metadata": {"name": name, "namespace": NS}, "spec": body})


def until(predicate: Callable[[], bool], timeout: float, what: str,
          interval: float = 0.02) -> float:
    """Seconds until predicate() is true (polled every `interval`)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def _get(kubeconfig: Path, kind: str, name: str) -> dict[str, Any]:
    """The object as JSON, or {} while it does not exist."""
    from kubemaas_testbed.binaries import kubectl as kubectl_bin

    out = subprocess.run([kubectl_bin(), f"--kubeconfig={kubeconfig}", "-n", NS, "get", kind,
                          name, "-o", "json"], capture_output=True, text=True)
    return dict(json.loads(out.stdout)) if out.returncode == 0 else {}


def insufficient_gpu(kubeconfig: Path, samples: int) -> list[float]:
    out = []
    for i in range(samples):
        name = f"too-big-{i}"
        start = time.monotonic()
        kubectl(kubeconfig, "apply", "-f", "-", input=model(
            name, replicas=3, gpu={"count": 8, "products": [H100]}))

        def reported(n: str = name) -> bool:
            st = _get(kubeconfig, "md", n).get("status") or {}
            return str(st.get("reason", "")).startswith("InsufficientGPU")
        until(reported, 60, f"{name}: InsufficientGPU")
        out.append(time.monotonic() - start)
        kubectl(kubeconfig, "-n", NS, "delete", "md", name, "--wait=false")
    return out


def drift_repair(kubeconfig: Path, samples: int) -> list[float]:
    kubectl(kubeconfig, "apply", "-f", "-", input=model("drift", replicas=1))
    until(lambda: (_get(kubeconfig, "md", "drift").get("status") or {}).get("phase") == "Ready",
          60, "the drift model Ready", interval=0.2)

    def image() -> str:
        dep = _get(kubeconfig, "deployment", "drift")
        return str(dep["spec"]["template"]["spec"]["containers"][0]["image"]) if dep else ""
    out = []
    for i in range(samples):
        kubectl(kubeconfig, "-n", NS, "set", "image", "deployment/drift",
                f"runtime=hand-edited:{i}")
        start = time.monotonic()  # the edit has been accepted when kubectl returns
        until(lambda: image() == IMAGE, 60, "the hand-edited image restored")
        out.append(time.monotonic() - start)
    kubectl(kubeconfig, "-n", NS, "delete", "md", "drift", "--wait=false")
    return out


def _peers(kubeconfig: Path, peering: str) -> str:
    return kubectl(kubeconfig, "get", "clusterkopfpeering", peering, "-o", "json")


def _one_failover(kubeconfig: Path, workdir: Path, env: dict[str, str], peering: str,
                  i: int, lifetime_s: int) -> float:
    dirs = [workdir / f"failover-{i}-{who}" for who in ("active", "standby")]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    active = OperatorProcess(kubeconfig, dirs[0], {**env, "POD_NAME": f"active-{i}",
                                                   "KUBEMAAS_OPERATOR_PRIORITY": "20"})
    standby = None
    try:
        until(lambda: f"active-{i}" in _peers(kubeconfig, peering), 30,
              "the active replica's keep-alive", interval=0.2)
        standby = OperatorProcess(kubeconfig, dirs[1], {**env, "POD_NAME": f"standby-{i}",
                                                        "KUBEMAAS_OPERATOR_PRIORITY": "10"})
        until(lambda: f"standby-{i}" in _peers(kubeconfig, peering), 30,
              "the standby's keep-alive", interval=0.2)
        active.proc.kill()  # SIGKILL: no goodbye in the peering object
        active.proc.wait(timeout=10)
        log_path = standby.log
        return until(lambda: "Resuming operations after the pause"
                     in log_path.read_text(errors="replace"), lifetime_s + 60,
                     "the standby to resume")
    finally:
        if active.proc.poll() is None:
            active.stop()
        if standby is not None:
            standby.stop()


def peering_failover(kubeconfig: Path, workdir: Path, samples: int,
                     lifetime_s: int) -> list[float]:
    kubectl(kubeconfig, "apply", "-f", str(PEERING_CRD))
    wait_established(kubeconfig, "clusterkopfpeerings.kopf.dev")
    peering = "kubemaas-bench-peering"
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
        "metadata": {"name": peering}}))
    env = {"KUBEMAAS_OPERATOR_PEERING": peering,
           "KUBEMAAS_OPERATOR_PEERING_LIFETIME_S": str(lifetime_s)}
    return [_one_failover(kubeconfig, workdir, env, peering, i, lifetime_s)
            for i in range(samples)]


def summarize(name: str, values: list[float], target: float | None) -> dict[str, Any]:
    median, worst = statistics.median(values), max(values)
    verdict = "" if target is None else (
        f"; target < {target:g} s: {'met' if worst < target else 'NOT met'}")
    log(f"{name}: median {median:.2f} s, max {worst:.2f} s over {len(values)}{verdict}")
    return {"median_s": median, "max_s": worst, "samples": values, "target_s": target}


def measure(kubeconfig: Path, workdir: Path, samples: int,
            lifetime_s: int = 6) -> dict[str, Any]:
    """All three, with operators of their own (stopped again afterwards)."""
    with contextlib.suppress(subprocess.CalledProcessError):  # already there
        kubectl(kubeconfig, "create", "namespace", NS)
    results: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    opdir = workdir / "reactions-operator"
    opdir.mkdir(parents=True, exist_ok=True)
    op = OperatorProcess(kubeconfig, opdir, {"KUBEMAAS_OPERATOR_RESYNC_S": "3600"})
    try:
        results["insufficient_gpu"] = summarize(
            "apply -> InsufficientGPU reported", insufficient_gpu(kubeconfig, samples),
            TARGETS["insufficient_gpu_s"])
        results["drift_repair"] = summarize(
            "hand edit -> Deployment repaired (resync 1 h)", drift_repair(kubeconfig, samples),
            TARGETS["drift_repair_s"])
    finally:
        op.stop()
    results["peering_failover"] = summarize(
        f"kill -9 of the active replica -> standby resumes (lifetime {lifetime_s} s)",
        peering_failover(kubeconfig, workdir, samples, lifetime_s), lifetime_s + 5.0)
    results["loadavg_after"] = os.getloadavg()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--lifetime", type=int, default=6, help="peering lifetime, seconds")
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="use this cluster instead of starting a private testbed")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kubemaas-bench-reactions-"))
    testbed = None
    if args.kubeconfig is None:
        from kubemaas_testbed.cluster import Cluster

        testbed = Cluster(workdir / "testbed")
        testbed.up(log=log)
        kubeconfig = testbed.kubeconfig
    else:
        kubeconfig = args.kubeconfig
    try:
        kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        wait_established(kubeconfig, "modeldeployments.serving.kubemaas.io")
        with contextlib.suppress(subprocess.CalledProcessError):
            kubectl(kubeconfig, "create", "namespace", "kubemaas-system")
        kubectl(kubeconfig, "apply", "-f", str(RBAC))
        results = measure(kubeconfig, workdir, args.samples, args.lifetime)
    finally:
        if testbed is not None:
            testbed.down()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "reactions.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
