"""Two operator replicas with kopf peering: only the one with the higher priority writes, and
when it dies (kill -9, no goodbye) the other takes over within the peering lifetime."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from kubemaas_testbed.cluster import wait_established
from tests.cluster.conftest import OPERATOR_NAMESPACE, RESYNC_S, Operator, install
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
PEERING_CRD = (ROOT / "operator" / "kubemaas_operator" / "peering"
               / "kopf.dev_clusterkopfpeerings.yaml")
PEERING = "kubemaas-peering-test"
LIFETIME_S = 6


def _md(name: str, **runtime: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "s3://models/m.onnx", "format": "onnx"},
                 "runtime": {"image": "ghcr.io/kubemaas/runtime:0.1.0", **runtime}}})


def _templates(sidecar_tag: str) -> str:
    text = (ROOT / "examples" / "templates-configmap.yaml").read_text()
    assert "log-shipper:1.0" in text
    return text.replace("log-shipper:1.0", f"log-shipper:{sidecar_tag}")


def _sidecar_image(kube: Kube, namespace: str) -> str:
    out = kube.kubectl("-n", namespace, "get", "deployment", "templated", "-o",
                       "jsonpath={.spec.template.spec.containers[1].image}", check=False)
    return out.stdout.strip()


def _phase(kube: Kube, namespace: str, name: str) -> str:
    out = kube.kubectl("-n", namespace, "get", "md", name, "-o", "json", check=False)
    if out.returncode != 0:
        return ""
    return str((json.loads(out.stdout).get("status") or {}).get("phase", ""))


def _uid(kube: Kube, namespace: str, deployment: str) -> str:
    out = kube.kubectl("-n", namespace, "get", "deployment", deployment, "-o",
                       "jsonpath={.metadata.uid}", check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def _peers(kube: Kube) -> dict[str, dict[str, object]]:
    out = kube.kubectl("get", "clusterkopfpeering", PEERING, "-o", "json")
    return dict(json.loads(out.stdout).get("status") or {})


def test_two_replicas_one_acts_and_the_other_takes_over(
        kube: Kube, namespace: str, operator: Operator,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    install(kube)
    kube.kubectl("apply", "-f", str(PEERING_CRD))
    wait_established(kube.kubeconfig, "clusterkopfpeerings.kopf.dev")
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
        "metadata": {"name": PEERING}}))
    workdir = tmp_path_factory.mktemp("peering")
    active = _replica(kube, workdir, "replica-a", 20, "active.log")
    standby = _replica(kube, workdir, "replica-b", 10, "standby.log")
    operator.stop()  # the session's standalone operator would act on everything too
    try:
        _only_the_higher_priority_acts(kube, namespace, active, standby)
        _standby_takes_over_after_kill(kube, namespace, active, standby)
        # A model on an administrator's template (read live, not from kopf's indexes): the
        # input that would make a paused replica with frozen indexes write.
        kube.kubectl("apply", "-f", "-", input=_templates("1.0"))
        kube.kubectl("-n", namespace, "apply", "-f", "-",
                     input=_md("templated", template="with-sidecar"))
        wait_for(lambda: _phase(kube, namespace, "templated") == "Ready", timeout=20,
                 what="the templated model to become Ready")
        newer = _replica(kube, workdir, "replica-c", 30, "newer.log")
        try:
            _a_newer_replica_pauses_the_acting_one(kube, namespace, standby, newer)
        finally:
            newer.stop()
    finally:
        active.stop()
        standby.stop()
        kube.kubectl("-n", OPERATOR_NAMESPACE, "delete", "configmap", "kubemaas-templates",
                     "--wait=false", check=False)
        operator.start()


def _replica(kube: Kube, workdir: Path, name: str, priority: int, log: str) -> Operator:
    return Operator(kube=kube, workdir=workdir, log=workdir / log, env={
        "KUBEMAAS_OPERATOR_PEERING": PEERING,
        "KUBEMAAS_OPERATOR_PEERING_LIFETIME_S": str(LIFETIME_S),
        "POD_NAME": name, "KUBEMAAS_OPERATOR_PRIORITY": str(priority)})


def _only_the_higher_priority_acts(kube: Kube, namespace: str, active: Operator,
                                   standby: Operator) -> None:
    active.start()
    wait_for(lambda: "replica-a" in _peers(kube), timeout=20,
             what="the active replica's keep-alive in the peering object")
    standby.start()
    # With a peering name, kopf starts paused and resumes only when no live peer has a
    # higher (or the same) priority: the standby announces itself and stays paused.
    wait_for(lambda: "replica-b" in _peers(kube), timeout=20,
             what="the standby's keep-alive in the peering object")
    assert {k: v["priority"] for k, v in _peers(kube).items()} == {  # type: ignore[index]
        "replica-a": 20, "replica-b": 10}

    kube.kubectl("-n", namespace, "apply", "-f", "-", input=_md("first"))
    wait_for(lambda: _phase(kube, namespace, "first") == "Ready", timeout=20,
             what="the first model to become Ready (reconciled by the active replica)")
    assert standby.fresh_health()["standby"] is True  # (kopf caches probes for 10 s)
    assert active.fresh_health()["standby"] is False
    # the counters from /metrics (fresh at each scrape), after those waits
    assert active.writes() > 0
    paused = standby.counters()
    assert paused["apiWrites"] == 0, "the paused standby wrote to the API"
    assert paused["resyncs"] == 0, paused
    assert "Resuming operations" not in standby.log_text()


def _standby_takes_over_after_kill(kube: Kube, namespace: str, active: Operator,
                                   standby: Operator) -> None:
    assert active.process is not None
    active.process.kill()  # SIGKILL: no goodbye in the peering object
    active.process.wait(timeout=5)
    killed = time.monotonic()
    wait_for(lambda: "Resuming operations after the pause" in standby.log_text(),
             timeout=LIFETIME_S + 15, what=f"the standby to resume (log {standby.log})")
    resumed = time.monotonic() - killed
    kube.kubectl("-n", namespace, "apply", "-f", "-", input=_md("second"))
    wait_for(lambda: _phase(kube, namespace, "second") == "Ready", timeout=20,
             what="the second model to become Ready (reconciled by the former standby)")
    took_over = time.monotonic() - killed
    # how soon is a figure for bench/operator/reactions.py (bound: lifetime + 5 s); the
    # wait above is only a functional bound
    print(f"failover: standby resumed {resumed:.1f} s after kill -9, second model Ready "
          f"{took_over:.1f} s after (peering lifetime {LIFETIME_S} s)")


def _a_newer_replica_pauses_the_acting_one(kube: Kube, namespace: str, acting: Operator,
                                           newer: Operator) -> None:
    """A replica with a higher priority joins (as in a rolling update): the one acting now
    stands by, and its queue and resync stop writing although its indexes still hold every
    model."""
    newer.start()
    wait_for(lambda: "standing by" in acting.log_text(), timeout=LIFETIME_S + 10,
             what=f"the former standby to pause for the newer replica ({acting.log})")
    # counted a resync period after it paused (writes in flight at the pause have landed)
    time.sleep(RESYNC_S)
    before = acting.writes()
    kube.kubectl("-n", namespace, "apply", "-f", "-", input=_md("third"))
    kube.kubectl("apply", "-f", "-", input=_templates("2.0"))
    uid = _uid(kube, namespace, "first")
    kube.kubectl("-n", namespace, "delete", "deployment", "first")
    wait_for(lambda: _phase(kube, namespace, "third") == "Ready", timeout=20,
             what="the third model to become Ready (reconciled by the newer replica)")
    wait_for(lambda: _uid(kube, namespace, "first") not in ("", uid), timeout=20,
             what="the deleted Deployment to be repaired by the newer replica")
    wait_for(lambda: _sidecar_image(kube, namespace).endswith(":2.0"), timeout=20,
             what="the newer replica to apply the changed template")
    # ... and through two resync periods of the newer replica (3 s each) after all that
    time.sleep(2 * RESYNC_S + 1)
    assert acting.writes() == before, "the paused replica kept writing"
    assert newer.writes() > 0
