"""Convergence: the operator SIGKILLed at 20 random points across rollouts and restarted each time
converges to the intended revision with no duplicate or orphaned children; a kube-apiserver
restart in the middle of a rollout is survived."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import Operator
from tests.cluster.test_operator import H100, apply
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

REVISION = "serving.kubemaas.io/revision"
KILLS = int(os.environ.get("KUBEMAAS_SOAK_KILLS", "20"))


def spec_of(name: str, image_tag: int, replicas: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": "s3://models/m.onnx", "format": "onnx"},
                            "runtime": {"image": f"ghcr.io/kubemaas/runtime:0.{image_tag}.0"},
                            "replicas": replicas}
    if name != "cpu":
        spec["gpu"] = {"count": 1, "products": [H100]}
    return {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name}, "spec": spec}


def _items(kube: Kube, namespace: str, kind: str, selector: str = "") -> list[dict[str, Any]]:
    args = ["-n", namespace, "get", kind, "-o", "json"]
    if selector:
        args += ["-l", selector]
    return list(json.loads(kube.kubectl(*args).stdout)["items"])


def converged(kube: Kube, namespace: str, wanted: dict[str, dict[str, Any]]) -> str:
    """'' when every model runs its intended revision and nothing else; else what is off."""
    mds = {m["metadata"]["name"]: m for m in _items(kube, namespace, "md")}
    deployments = _items(kube, namespace, "deployments")
    services = _items(kube, namespace, "services")
    pods = _items(kube, namespace, "pods")
    replicasets = _items(kube, namespace, "replicasets")
    for name, spec in wanted.items():
        md = mds[name]
        st = md.get("status") or {}
        if st.get("observedGeneration") != md["metadata"]["generation"]:
            return f"{name}: status is of generation {st.get('observedGeneration')}"
        if st.get("phase") != "Ready":
            return f"{name}: phase {st.get('phase')} ({st.get('reason')})"
        ro = st.get("rollout") or {}
        if "update" in ro or not ro.get("current"):
            return f"{name}: rollout not finished: {ro.get('message')}"
        current = ro["current"]["hash"]
        mine = [d for d in deployments
                if d["metadata"]["labels"].get("app.kubernetes.io/instance") == name]
        if len(mine) != 1:
            return f"{name}: {len(mine)} Deployments"
        dep = mine[0]
        uid = md["metadata"]["uid"]
        for child in (dep, *[s for s in services if s["metadata"]["name"] == name]):
            owners = [o["uid"] for o in child["metadata"].get("ownerReferences") or []]
            if owners != [uid]:
                return f"{name}: {child['kind']} owned by {owners}, not the model"
        if len([s for s in services if s["metadata"]["labels"].get(
                "app.kubernetes.io/instance") == name]) != 1:
            return f"{name}: not exactly one Service"
        if dep["metadata"]["annotations"].get(REVISION) != current:
            return f"{name}: Deployment at {dep['metadata']['annotations'].get(REVISION)}, " \
                   f"current {current}"
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        if image != spec["spec"]["runtime"]["image"]:
            return f"{name}: Deployment runs {image}, spec says {spec['spec']['runtime']['image']}"
        mypods = [p for p in pods if p["metadata"]["labels"].get(
            "app.kubernetes.io/instance") == name]
        if len(mypods) != spec["spec"]["replicas"]:
            return f"{name}: {len(mypods)} pods, want {spec['spec']['replicas']}"
        for p in mypods:
            if p["metadata"].get("deletionTimestamp"):
                return f"{name}: pod {p['metadata']['name']} terminating"
            if p["metadata"]["labels"].get(REVISION) != current:
                return f"{name}: pod {p['metadata']['name']} of another revision"
            if not any(c["type"] == "Ready" and c["status"] == "True"
                       for c in p["status"].get("conditions") or []):
                return f"{name}: pod {p['metadata']['name']} not Ready"
        busy = [r for r in replicasets if r["metadata"]["labels"].get(
            "app.kubernetes.io/instance") == name and (r["spec"].get("replicas") or 0) > 0]
        if len(busy) != 1:
            return f"{name}: {len(busy)} ReplicaSets with replicas"
    stray = [d["metadata"]["name"] for d in deployments
             if d["metadata"]["labels"].get("app.kubernetes.io/instance") not in wanted]
    return f"stray Deployments {stray}" if stray else ""


def sigkill(op: Operator) -> None:
    assert op.process is not None
    op.process.send_signal(signal.SIGKILL)
    op.process.wait(timeout=10)
    op.process = None


def test_operator_killed_at_random_points_converges(kube: Kube, namespace: str,
                                                    operator: Operator) -> None:
    rng = random.Random(20261123)
    wanted = {"gpu2": spec_of("gpu2", 1, 2), "gpu1": spec_of("gpu1", 1, 1),
              "cpu": spec_of("cpu", 1, 2)}
    for body in wanted.values():
        apply(kube, namespace, yaml.safe_dump(body))
    wait_for(lambda: converged(kube, namespace, wanted) == "", timeout=60,
             what="the first revisions")
    results = []
    for i in range(KILLS):
        name = rng.choice(sorted(wanted))
        replicas = wanted[name]["spec"]["replicas"]
        if rng.random() < 0.25:
            replicas = 1 + (replicas % 3)
        wanted[name] = spec_of(name, i + 2, replicas)
        apply(kube, namespace, yaml.safe_dump(wanted[name]))
        delay = rng.uniform(0.0, 2.0)
        time.sleep(delay)  # the random kill point itself (not a wait for anything)
        sigkill(operator)
        operator.start()
        started = time.monotonic()
        try:
            wait_for(lambda: converged(kube, namespace, wanted) == "", timeout=60,
                     what=f"convergence after kill {i + 1}", interval=0.5)
            ok, detail = True, ""
        except AssertionError as err:
            ok, detail = False, f"{err}; now: {converged(kube, namespace, wanted)}"
        results.append((i + 1, name, round(delay, 2), ok, round(time.monotonic() - started, 1)))
        print(f"kill {i + 1}: {name} -> 0.{i + 2}.0 x{replicas}, killed {delay:.2f} s after the "
              f"change: {'converged' if ok else 'NOT converged'} in "
              f"{time.monotonic() - started:.1f} s {detail}")
    n = sum(1 for r in results if r[3])
    print(f"SOAK: {n}/{len(results)} kills converged to the intended revision, no orphans")
    assert n == len(results), results


def test_apiserver_restart_mid_rollout(kube: Kube, namespace: str, operator: Operator) -> None:
    if kube.log_dir is None:
        pytest.skip("restarting kube-apiserver needs the private testbed (KUBEMAAS_KUBECONFIG "
                    "names a shared cluster)")
    from kubemaas_testbed.cluster import restart

    wanted = {"m": spec_of("m", 1, 4)}
    apply(kube, namespace, yaml.safe_dump(wanted["m"]))
    wait_for(lambda: converged(kube, namespace, wanted) == "", timeout=60, what="revision 1")
    wanted["m"] = spec_of("m", 2, 4)
    apply(kube, namespace, yaml.safe_dump(wanted["m"]))

    def in_progress() -> str:
        """What shows the rollout under way: the operator has put the new image into the
        Deployment, and its status still has an update revision (a revision counts as complete
        only after its replicas have been Ready for a settle period, so this lasts seconds)."""
        md = _items(kube, namespace, "md")[0]
        ro = (md.get("status") or {}).get("rollout") or {}
        dep = _items(kube, namespace, "deployments")[0]
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        if (ro.get("update") or {}).get("number") == 2 and image.endswith(":0.2.0"):
            return f"revision 2 rolling out: {ro.get('message')}"
        return ""
    during = wait_for(in_progress, timeout=30, interval=0.1, what="the rollout under way")
    away = restart(kube.kubeconfig.parent, "kube-apiserver")
    print(f"kube-apiserver restarted mid-rollout ({away:.1f} s away); before: {during}")
    wait_for(lambda: converged(kube, namespace, wanted) == "", timeout=120, interval=0.5,
             what="convergence after the kube-apiserver restart")
    assert operator.alive()
