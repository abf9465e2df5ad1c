"""Lifecycle: update, scale, autoscaling, drift repair, deletion, restart without writes, and an
idle resync that writes nothing."""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster.conftest import Operator, reconfigured
from tests.cluster.test_operator import apply, condition, get, md, status, wait_phase
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster
HOUR = 3600


def image_of(kube: Kube, namespace: str, name: str) -> str:
    dep = get(kube, namespace, "deployment", name)
    return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])


def exists(kube: Kube, namespace: str, kind: str, name: str) -> bool:
    return kube.kubectl("-n", namespace, "get", kind, name, check=False).returncode == 0


def test_update_scale_and_delete(kube: Kube, namespace: str, operator: Operator) -> None:
    apply(kube, namespace, md("m"))
    wait_phase(kube, namespace, "m", "Ready")
    first = status(kube, namespace, "m")["currentRevision"]

    # A spec change rolls the Deployment; the status follows the new revision.
    apply(kube, namespace, md("m", runtime={"image": "ghcr.io/kubemaas/runtime:0.2.0"}))
    wait_for(lambda: image_of(kube, namespace, "m") == "ghcr.io/kubemaas/runtime:0.2.0",
             timeout=10, what="the new image in the Deployment")
    st = wait_for(lambda: (lambda s: s if s.get("phase") == "Ready" and s.get(
        "observedGeneration") == 2 and s.get("currentRevision") != first else None)(
        status(kube, namespace, "m")), timeout=30, what="Ready at generation 2")
    assert st["currentRevision"] == st["updateRevision"]

    # kubectl scale works through the scale subresource; a PDB appears with 2+ replicas.
    kube.kubectl("-n", namespace, "scale", "md", "m", "--replicas=3")
    wait_for(lambda: get(kube, namespace, "deployment", "m")["spec"]["replicas"] == 3,
             timeout=10, what="Deployment scaled to 3")
    wait_for(lambda: exists(kube, namespace, "pdb", "m"), timeout=10, what="a PDB")
    st = wait_for(lambda: (lambda s: s if s.get("readyReplicas") == 3 and s.get(
        "phase") == "Ready" else None)(status(kube, namespace, "m")), timeout=30,
        what="3 ready replicas")
    assert st["replicaSummary"] == "3/3"
    scale = json.loads(kube.kubectl("-n", namespace, "get", "md", "m", "--subresource=scale",
                                    "-o", "json").stdout)
    assert scale["status"]["replicas"] == 3 and "app.kubernetes.io/instance=m" in scale[
        "status"]["selector"]
    kube.kubectl("-n", namespace, "scale", "md", "m", "--replicas=1")
    wait_for(lambda: not exists(kube, namespace, "pdb", "m"), timeout=10, what="the PDB gone")

    # Deleting the model collects its children (ownerReferences + the garbage collector; on a
    # control plane just started, as when this file runs first, its graph may still be
    # syncing: 30 s were once too few there).
    kube.kubectl("-n", namespace, "delete", "md", "m")
    wait_for(lambda: not exists(kube, namespace, "deployment", "m")
             and not exists(kube, namespace, "service", "m"), timeout=90,
             what="the children garbage-collected")


def test_autoscaling_renders_an_hpa_that_owns_replicas(kube: Kube, namespace: str,
                                                       operator: Operator) -> None:
    apply(kube, namespace, md("auto", runtime={"image": "i", "resources": {"cpu": "1"}},
                              autoscaling={"minReplicas": 2, "maxReplicas": 5,
                                           "targetCPUUtilization": 70}))
    hpa = wait_for(lambda: get(kube, namespace, "hpa", "auto"), timeout=10, what="an HPA")
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 5
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "auto"}
    dep = get(kube, namespace, "deployment", "auto")
    ours = [m for m in dep["metadata"]["managedFields"] if m["manager"] == "kubemaas-operator"]
    assert ours and all("f:replicas" not in m["fieldsV1"].get("f:spec", {}) for m in ours), (
        "the operator must not own spec.replicas when an autoscaler does")
    # What the autoscaler decides stands: the operator does not fight it.
    kube.kubectl("-n", namespace, "scale", "deployment", "auto", "--replicas=4")
    st = wait_for(lambda: (lambda s: s if s.get("desiredReplicas") == 4 and s.get(
        "readyReplicas") == 4 else None)(status(kube, namespace, "auto")), timeout=30,
        what="desiredReplicas 4 (the autoscaler's choice)")
    assert st["phase"] == "Ready"
    assert get(kube, namespace, "deployment", "auto")["spec"]["replicas"] == 4
    # Back to fixed replicas: the HPA goes away, the operator owns replicas again.
    apply(kube, namespace, md("auto", runtime={"image": "i", "resources": {"cpu": "1"}},
                              replicas=1))
    wait_for(lambda: not exists(kube, namespace, "hpa", "auto"), timeout=10, what="no HPA")
    wait_for(lambda: get(kube, namespace, "deployment", "auto")["spec"]["replicas"] == 1,
             timeout=10, what="replicas back to 1")


def test_drift_is_repaired_on_the_childs_own_watch_event(kube: Kube, namespace: str,
                                                          operator: Operator) -> None:
    """docs/operator.md: hand edits are undone on the child's own watch event. The operator runs
    with an hour-long resync here, so the periodic drift check cannot explain a repair."""
    with reconfigured(operator, KUBEMAAS_OPERATOR_RESYNC_S=str(HOUR)):
        apply(kube, namespace, md("d", replicas=2))
        wait_phase(kube, namespace, "d", "Ready")
        repairs: list[str] = []
        edited = time.monotonic()
        kube.kubectl("-n", namespace, "set", "image", "deployment/d", "runtime=evil:latest")
        wait_for(lambda: image_of(kube, namespace, "d") == "ghcr.io/kubemaas/runtime:0.1.0",
                 timeout=20, what="the hand-edited image restored")
        repairs.append(f"image {time.monotonic() - edited:.1f} s")
        uid = get(kube, namespace, "service", "d")["metadata"]["uid"]
        edited = time.monotonic()
        kube.kubectl("-n", namespace, "delete", "service", "d")
        wait_for(lambda: exists(kube, namespace, "service", "d")
                 and get(kube, namespace, "service", "d")["metadata"]["uid"] != uid,
                 timeout=20, what="the deleted Service recreated")
        repairs.append(f"Service {time.monotonic() - edited:.1f} s")
        edited = time.monotonic()
        kube.kubectl("-n", namespace, "delete", "pdb", "d")
        wait_for(lambda: exists(kube, namespace, "pdb", "d"), timeout=20,
                 what="the PDB recreated")
        repairs.append(f"PDB {time.monotonic() - edited:.1f} s")
        wait_phase(kube, namespace, "d", "Ready")
        print("drift repaired on watch events: " + ", ".join(repairs))
        assert operator.counters()["resyncs"] == 0, "a periodic resync ran after all"


def _ports(kube: Kube, namespace: str, kind: str, name: str) -> list[tuple[str, int]]:
    spec = get(kube, namespace, kind, name)["spec"]
    if kind == "deployment":
        return [(p["name"], p["containerPort"])
                for p in spec["template"]["spec"]["containers"][0]["ports"]]
    return [(p["name"], p["port"]) for p in spec["ports"]]


def test_hand_edited_port_numbers_are_put_back_and_the_model_stays_ready(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """A port's number changed by hand: server-side apply keys ports by number, so ours came
    back beside the edited one of the same name, which the API server refused (a duplicate
    name); the operator took that for an invalid spec and left the model Failed/Rejected for
    good. Now the port is put back and the model stays Ready, in a few writes (the
    Deployment's edit rolls its pods twice: status writes)."""
    apply(kube, namespace, md("p"))
    wait_phase(kube, namespace, "p", "Ready", timeout=60)
    for kind, path in (("service", "/spec/ports/0/port"),
                       ("deployment", "/spec/template/spec/containers/0/ports/0/containerPort")):
        want = _ports(kube, namespace, kind, "p")
        before = operator.writes()
        kube.kubectl("-n", namespace, "patch", kind, "p", "--type=json", "-p",
                     json.dumps([{"op": "replace", "path": path, "value": 9999}]))
        wait_for(lambda k=kind, w=want: _ports(kube, namespace, k, "p") == w, timeout=30,
                 what=f"the {kind}'s hand-edited port put back")
        operator.wait_resyncs(2)
        st = status(kube, namespace, "p")
        assert st.get("phase") == "Ready", condition(st, "Ready")
        assert operator.writes() - before <= 25, f"{operator.writes() - before} writes"


def test_a_childs_instance_label_removed_by_hand_is_put_back(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """`kubectl label service NAME app.kubernetes.io/instance-`: the index function gave None
    for it, on which kopf keeps the object's earlier entry, so the operator went on seeing the
    child as it was and never put the label back (0 writes through three resyncs)."""
    apply(kube, namespace, md("lb", replicas=2))
    wait_phase(kube, namespace, "lb", "Ready", timeout=60)
    label = "app.kubernetes.io/instance"
    for kind in ("service", "deployment", "networkpolicy", "pdb"):
        kube.kubectl("-n", namespace, "label", kind, "lb", f"{label}-")
        wait_for(lambda k=kind: get(kube, namespace, k, "lb")["metadata"].get(
            "labels", {}).get(label) == "lb", timeout=20,
            what=f"the {kind}'s instance label put back")
    wait_phase(kube, namespace, "lb", "Ready")


def _versions(kube: Kube, namespace: str) -> dict[str, str]:
    out = {}
    for kind in ("md", "deployment", "service", "pdb"):
        items = json.loads(kube.kubectl("-n", namespace, "get", kind, "-o", "json").stdout)
        for item in items["items"]:
            out[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return out


def _settled(kube: Kube, namespace: str, name: str) -> bool:
    dep = get(kube, namespace, "deployment", name)
    ds, want = dep.get("status") or {}, dep["spec"]["replicas"]
    st = status(kube, namespace, name)
    md_obj = get(kube, namespace, "md", name)
    return (ds.get("observedGeneration") == dep["metadata"]["generation"]
            and all(ds.get(k) == want for k in ("replicas", "updatedReplicas", "readyReplicas",
                                                "availableReplicas"))
            and st.get("phase") == "Ready"
            and st.get("observedGeneration") == md_obj["metadata"]["generation"]
            and st.get("readyReplicas") == want
            and "update" not in (st.get("rollout") or {}))


def test_restart_resumes_without_writes_and_idle_resync_writes_nothing(
        kube: Kube, namespace: str, operator: Operator) -> None:
    for i in range(3):
        apply(kube, namespace, md(f"r{i}", replicas=2))
    for i in range(3):
        wait_phase(kube, namespace, f"r{i}", "Ready")
    # Other tests' namespaces must be gone: their teardown makes the operator react.
    wait_for(lambda: not [line for line in kube.kubectl(
        "get", "namespaces", "--no-headers").stdout.splitlines()
        if line.startswith("t-") and not line.startswith(namespace)],
        timeout=90, what="other test namespaces deleted")
    # The last status writes and Deployment updates have landed: every Deployment's status is
    # final and every model's status is at its generation with its first revision complete.
    wait_for(lambda: all(_settled(kube, namespace, f"r{i}") for i in range(3)), timeout=60,
             what="the three models and their Deployments settled")
    before = _versions(kube, namespace)

    operator.restart()
    # Resume (the initial listing reconciles every model) and then at least two whole resync
    # periods (3 s each here), the counters read from /metrics as the third pass starts.
    state = operator.wait_resyncs(3)
    assert state["apiWrites"] == 0, (
        f"the restarted operator wrote to the API {state['apiWrites']} time(s) while resuming "
        f"and through {state['resyncs']} idle resync passes")
    assert _versions(kube, namespace) == before

    # And it still works after the restart.
    apply(kube, namespace, md("r0", replicas=1))
    wait_for(lambda: get(kube, namespace, "deployment", "r0")["spec"]["replicas"] == 1,
             timeout=10, what="r0 scaled down by the restarted operator")
    assert condition(status(kube, namespace, "r1"), "Ready")["status"] == "True"
