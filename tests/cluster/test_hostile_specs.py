"""Resources a probe against a real control plane found the operator mishandling: each is
reported on its own status (a clear reason and message), costs no other resource anything, and
ends the retries that cannot help (/work/scratch/probe-operator.md had the repros)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from kubemaas_operator.api.model import parse_model
from kubemaas_operator.modelcache import implicit
from tests.cluster.conftest import Operator
from tests.cluster.test_implicit_cache import asking, gone
from tests.cluster.test_modelcache import (
    _json,
    cache,
    cache_pods,
    cache_status,
    terminate,
    two_nodes,
)
from tests.cluster.test_operator import apply, condition, get, md, status, wait_phase
from tests.cluster.test_rollout_gateway import gateway_api, gw_model, gw_ns  # noqa: F401
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def ready_message(st: dict[str, Any]) -> str:
    return str(condition(st, "Ready").get("message") or "")


def ready_reason(st: dict[str, Any]) -> str:
    return str(condition(st, "Ready").get("reason") or "")


def test_overflowing_quantities_are_invalid_specs_and_stop_no_cache(
        kube: Kube, namespace: str, operator: Operator) -> None:
    n1, _ = two_nodes(kube)
    apply(kube, namespace, md("ov2", model={
        "uri": "https://example.com/ov2.onnx", "format": "onnx",
        "autoCache": {"sizeLimit": "9e999999999", "storage": {"type": "node",
                                                              "node": {"nodes": [n1]}}}}))
    apply(kube, namespace, md("ov5", runtime={"image": "x", "resources": {"memory": "1e1000000"}}))
    for name, field in (("ov2", "autoCache.sizeLimit"), ("ov5", "resources.memory")):
        st = wait_phase(kube, namespace, name, "Failed")
        assert ready_reason(st) == "InvalidSpec" and field in ready_message(st), st
        assert "too large" in ready_message(st), st
    # a ModelCache of the namespace reads every model's spec: ov2's does not stop it
    apply(kube, namespace, cache("neighbour", [n1]))
    apply(kube, namespace, cache("huge", [n1], sizeLimit="9e999999999"))
    wait_for(lambda: cache_status(kube, namespace, "neighbour").get("phase"), timeout=60,
             what="the neighbour cache's status beside a model with an overflowing sizeLimit")
    st = wait_for(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(
        cache_status(kube, namespace, "huge")), timeout=60, what="the huge cache Failed")
    assert "too large" in str(st.get("message")), st


def test_odd_affinity_shapes_are_invalid_specs(kube: Kube, namespace: str,
                                               operator: Operator) -> None:
    required = "requiredDuringSchedulingIgnoredDuringExecution"
    odd = {"u4": {"affinity": {"nodeAffinity": 5}},  # crashed scheduling.placement
           "af1": {"affinity": {"nodeAffinity": {required: {"nodeSelectorTerms": ["str"]}}}},
           "af3": {"topologySpreadConstraints": [{"maxSkew": 0, "garbage": True,
                                                  "labelSelector": 7}]},  # a 500 on apply
           "af5": {"affinity": {"podAntiAffinity": "x"}}}
    for name, scheduling in odd.items():
        apply(kube, namespace, md(name, scheduling=scheduling))
    for name in odd:
        st = wait_phase(kube, namespace, name, "Failed")
        assert ready_reason(st) == "InvalidSpec", st
        assert "spec.scheduling." in ready_message(st) and "Kubernetes" in ready_message(st), st


def test_autocache_never_takes_over_someones_cache_with_its_name(
        kube: Kube, namespace: str, operator: Operator) -> None:
    n1, n2 = two_nodes(kube)
    text = asking("ac3", n2, uri="https://example.com/models/squat.onnx")
    spec = yaml.safe_load(text)["spec"]
    model = parse_model(spec["model"])
    taken = implicit.cache_name(model.uri, implicit.model_key(model))
    apply(kube, namespace, cache(taken, [n1], source={"uri": "https://example.com/other.onnx"}))
    apply(kube, namespace, text)
    st = wait_phase(kube, namespace, "ac3", "Failed")
    assert ready_reason(st) == "CacheNameConflict", st
    assert taken in ready_message(st) and "other.onnx" in ready_message(st), st
    assert not (_json(kube, "-n", namespace, "get", "modelcache", taken)["metadata"].get(
        "ownerReferences")), "the model took the user's cache over"
    assert gone(kube, namespace, "deployment", "ac3")  # no pod mounts the wrong files


def test_a_model_named_like_anothers_track_service_takes_nothing_over(
        kube: Kube, gw_ns: str) -> None:  # noqa: F811
    apply(kube, gw_ns, gw_model("r-gw", 1))
    wait_for(lambda: kube.kubectl("-n", gw_ns, "get", "service", "r-gw-stable",
                                  check=False).returncode == 0,
             timeout=60, what="r-gw's track Service r-gw-stable")
    apply(kube, gw_ns, md("r-gw-stable", replicas=1))
    st = wait_phase(kube, gw_ns, "r-gw-stable", "Failed")
    assert ready_reason(st) == "NameConflict", st
    assert "Service r-gw-stable" in ready_message(st) and "ModelDeployment r-gw" in ready_message(
        st), st
    svc = get(kube, gw_ns, "service", "r-gw-stable")
    assert [r["name"] for r in svc["metadata"]["ownerReferences"]] == ["r-gw"]
    assert svc["spec"]["selector"]["app.kubernetes.io/instance"] == "r-gw"
    assert ready_reason(wait_phase(kube, gw_ns, "r-gw", "Ready", timeout=60)) == "Ready"


@pytest.mark.parametrize("size", ["1e400", "NaN", "1e30"])
def test_an_impossible_download_report_fails_the_cache(kube: Kube, namespace: str,
                                                       operator: Operator, size: str) -> None:
    n1, _ = two_nodes(kube)
    apply(kube, namespace, cache("hr6", [n1], download={"progressIntervalSeconds": 1,
                                                        "retries": 0}))
    (pod,) = wait_for(lambda: cache_pods(kube, namespace, "hr6") or None, timeout=60,
                      what="hr6's download pod")
    report = '{"phase":"Ready","files":[{"path":"a","size":SIZE}]}'.replace("SIZE", size)
    terminate(kube, namespace, pod, 0, report)
    st = wait_for(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(
        cache_status(kube, namespace, "hr6")), timeout=60, what="hr6 Failed on its report")
    assert st["reason"] == "BadReport" and "files[0].size" in st["message"], st


def test_a_cache_name_longer_than_a_label_value_is_refused(kube: Kube, namespace: str,
                                                           operator: Operator) -> None:
    """Its pods carry the name as a label value (at most 63 characters): a longer name never
    found its own download pods and stayed Pending."""
    n1, _ = two_nodes(kube)
    result = kube.kubectl("-n", namespace, "apply", "-f", "-", input=cache("c" * 64, [n1]),
                          check=False)
    assert result.returncode != 0 and "at most 63 characters" in result.stderr, result.stderr
    apply(kube, namespace, cache("c" * 63, [n1]))


def test_a_failed_cache_is_tried_again_once_its_download_settings_are_fixed(
        kube: Kube, namespace: str, operator: Operator) -> None:
    n1, _ = two_nodes(kube)
    # (node storage pins its pods with nodeName; a claim's pod is the one tolerations reach)
    apply(kube, namespace, cache("mct2", [n1], storage={
        "type": "pvc", "pvc": {"claimName": "some-claim"}}, download={
        "progressIntervalSeconds": 1, "tolerations": [{"key": "k", "operator": "Weird"}]}))
    st = wait_for(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(
        cache_status(kube, namespace, "mct2")), timeout=60, what="mct2 Failed")
    assert st["reason"] == "PodRejected" and "Weird" in st["message"], st
    kube.kubectl("-n", namespace, "patch", "modelcache", "mct2", "--type=merge", "-p",
                 '{"spec":{"download":{"tolerations":[{"key":"k","operator":"Exists"}]}}}')
    (pod,) = wait_for(lambda: cache_pods(kube, namespace, "mct2") or None, timeout=60,
                      what="a download pod after the fix")
    assert {"key": "k", "operator": "Exists"} in pod["spec"]["tolerations"]
    st = wait_for(lambda: (lambda s: s if s.get("reason") != "PodRejected" else None)(
        cache_status(kube, namespace, "mct2")), timeout=60, what="mct2 past PodRejected")
    assert "Weird" not in str(st.get("message")), st


def test_a_stable_spec_edited_in_the_status_is_not_rolled_back_to(
        kube: Kube, ns: str, operator: Operator) -> None:
    from tests.cluster.test_rollout import FAILURE_LABEL, model, wait_revision

    apply(kube, ns, model("ro1", 1, progressDeadlineSeconds=10))
    wait_revision(kube, ns, "ro1", 1)
    apply(kube, ns, model("ro1", 1, labels={FAILURE_LABEL: "crash"}, progressDeadlineSeconds=10))
    st = wait_for(lambda: (lambda s: s if s.get("reason", "").startswith("RolledBack")
                           else None)(status(kube, ns, "ro1")), timeout=60, what="the rollback")
    good = get(kube, ns, "deployment", "ro1")["spec"]["template"]["spec"]["containers"][0]
    evil = dict(st["rollout"]["stableSpec"])
    evil["runtime"] = {**evil["runtime"], "image": "evil:1"}
    for tampered, said in ((evil, "renders revision"), ({"model": "garbage"}, "does not render")):
        line = f"status.rollout.stableSpec is not rolled back to: it {said}"

        def refused(tampered: dict[str, Any] = tampered, line: str = line) -> bool:
            if line in operator.log_text():
                return True
            # a status write the operator had under way may have put its own stableSpec back
            if status(kube, ns, "ro1")["rollout"].get("stableSpec") != tampered:
                kube.kubectl("-n", ns, "patch", "md", "ro1", "--subresource=status",
                             "--type=merge", "-p", json.dumps(
                                 {"status": {"rollout": {"stableSpec": tampered}}}))
            return False
        wait_for(refused, timeout=60, interval=1.0,
                 what="the operator to refuse the edited stableSpec")
        live = get(kube, ns, "deployment", "ro1")["spec"]["template"]["spec"]["containers"][0]
        assert live["image"] == good["image"] != "evil:1", live


def test_a_model_named_like_a_cache_does_not_count_its_download_pod(
        kube: Kube, namespace: str, operator: Operator) -> None:
    n1, _ = two_nodes(kube)
    apply(kube, namespace, cache("flip", [n1]))
    (fetch,) = wait_for(lambda: cache_pods(kube, namespace, "flip") or None, timeout=60,
                        what="flip's download pod")
    apply(kube, namespace, md("flip", replicas=1))
    st = wait_phase(kube, namespace, "flip", "Ready", timeout=60)
    assert st["readyReplicas"] == 1, st
    still = [p["metadata"]["name"] for p in cache_pods(kube, namespace, "flip")]
    assert still == [fetch["metadata"]["name"]]  # Ready while the download pod runs


def test_a_rejected_deployment_is_not_applied_again_every_resync(
        kube: Kube, namespace: str, operator: Operator) -> None:
    apply(kube, namespace, md("q-cpulimit", runtime={"image": "x", "resources": {
        "cpu": "2", "memory": "1Gi", "cpuLimit": "1"}}))
    st = wait_phase(kube, namespace, "q-cpulimit", "Failed")
    assert ready_reason(st) == "Rejected" and "cpu limit" in ready_message(st), st
    operator.wait_resyncs(1)
    starts = operator.log_text().count("q-cpulimit: revision 1")
    writes, passes = operator.writes_during(3, namespace)
    assert writes == 0, f"{writes} write(s) in {passes} resync passes"
    assert operator.log_text().count("q-cpulimit: revision 1") == starts, "logged again"


def test_a_sub_millicore_cpu_does_not_drift_every_resync(kube: Kube, namespace: str,
                                                         operator: Operator) -> None:
    apply(kube, namespace, md("tiny-cpu", runtime={"image": "x", "resources": {
        "cpu": "0.00001", "memory": "1Gi"}}))
    wait_phase(kube, namespace, "tiny-cpu", "Ready", timeout=60)
    # Its first rollout is entered complete in the status (a write) a few seconds after Ready:
    # counted from there, only drift writes.
    wait_for(lambda: (lambda r: "current" in r and "update" not in r)(
        status(kube, namespace, "tiny-cpu").get("rollout") or {}),
        timeout=30, what="tiny-cpu's first rollout complete")
    writes, passes = operator.writes_during(3, namespace)
    assert writes == 0, f"{writes} write(s) in {passes} resync passes"
    assert "tiny-cpu: applied Deployment (drifted" not in operator.log_text()
