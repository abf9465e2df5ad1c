"""Floods of events that change nothing a reconcile reads: a settled or waiting model or cache
writes nothing for them (at most its documented retry)."""

from __future__ import annotations

import time

import pytest

from tests.cluster.conftest import Operator, reconfigured, writes_to
from tests.cluster.test_implicit_cache import asking
from tests.cluster.test_modelcache import two_nodes
from tests.cluster.test_operator import apply, condition, md, status, wait_phase
from tests.cluster.test_operator_refusals import _policed, quota, webhook_down
from tests.cluster.test_status_refusal import status_policed
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

CPU = {"image": "ghcr.io/kubemaas/runtime:0.1.0", "resources": {"cpu": "1"}}


def _writes_while(operator: Operator, namespace: str, touch: list[list[str]], kube: Kube,
                  settle_s: float = 3.0) -> int:
    """The operator's writes to `namespace` while each kubectl command of `touch` runs, a
    second apart, and `settle_s` after the last."""
    before = writes_to(operator.fresh_health(), namespace)
    for args in touch:
        kube.kubectl("-n", namespace, *args)
        time.sleep(1.0)
    time.sleep(settle_s)
    return writes_to(operator.fresh_health(), namespace) - before


def _quiet_under_annotations(kube: Kube, namespace: str, operator: Operator,
                             name: str) -> dict[str, object]:
    """With resyncs two minutes apart (only events can explain a write), model `name` annotated
    six times a second apart: the operator writes nothing to the namespace. Its status then."""
    with reconfigured(operator, KUBEMAAS_OPERATOR_RESYNC_S="120"):
        time.sleep(3)  # the first look after the restart asks once
        touch = [["annotate", "md", name, f"example.com/touched={i}", "--overwrite"]
                 for i in range(6)]
        writes = _writes_while(operator, namespace, touch, kube)
        assert writes == 0, writes
        return status(kube, namespace, name)


def test_annotating_a_ready_models_deployment_writes_nothing(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """A Deployment's generation moves when its annotations change: each annotation someone
    put on a Ready model's Deployment flipped the model Ready -> Progressing (RollingOut) ->
    Ready, two status writes and two Events (24 writes for 6 annotations)."""
    apply(kube, namespace, md("ok", runtime=CPU))
    wait_phase(kube, namespace, "ok", "Ready", timeout=60)
    # its first rollout is entered complete in the status (a write) a few seconds after Ready
    wait_for(lambda: (lambda r: "current" in r and "update" not in r)(
        status(kube, namespace, "ok").get("rollout") or {}),
        timeout=30, what="ok's first rollout complete")
    operator.wait_resyncs(1)
    touch = [["annotate", "deployment", "ok", f"example.com/touched={i}", "--overwrite"]
             for i in range(6)]
    writes = _writes_while(operator, namespace, touch, kube)
    assert writes == 0, writes
    assert wait_phase(kube, namespace, "ok", "Ready")["reason"] == "Ready"


def test_a_refused_model_is_not_asked_again_at_each_of_its_events(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """A Deployment an admission policy refuses is tried again at each resync (docs/operator.md);
    each event of the model (a label or annotation someone put on it) asked again too, a refused
    write each (6 for 6 annotations with no resync in between)."""
    with _policed(kube, namespace):
        apply(kube, namespace, md("frozen", runtime=CPU))
        wait_for(lambda: condition(status(kube, namespace, "frozen"), "Ready").get("reason")
                 == "Refused", timeout=30, what="model frozen Refused")
        st = _quiet_under_annotations(kube, namespace, operator, "frozen")
        assert condition(st, "Ready")["reason"] == "Refused"


def test_a_write_a_webhook_keeps_failing_waits_for_its_retry_whatever_wakes_the_model(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """Once reported (ApiError), a failing write is tried again after 10, 20, 40, then every 60
    s (docs/operator.md); every event of the model and every resync tried it again instead, a
    failing write each (an annotation a second: about 15 in 15 s)."""
    apply(kube, namespace, md("hooked", runtime=CPU))
    wait_phase(kube, namespace, "hooked", "Ready", timeout=60)
    with webhook_down(kube, namespace):
        apply(kube, namespace, md("hooked", runtime=CPU, replicas=2))
        wait_for(lambda: condition(status(kube, namespace, "hooked"), "Ready").get("reason")
                 == "ApiError", timeout=60, what="model hooked ApiError")
        touch = [["annotate", "md", "hooked", f"example.com/touched={i}", "--overwrite"]
                 for i in range(12)]
        writes = _writes_while(operator, namespace, touch, kube, settle_s=1.0)
        assert writes <= 2, writes  # the retries after 10 and 20 s at most


def test_a_refused_status_is_not_written_again_at_each_event_of_the_model(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """A policy refuses the model's status: the write is tried again after 5 s, doubling up to
    a minute (docs/operator.md); each event of the model wrote the refused status again."""
    with status_policed(kube, namespace):
        kube.kubectl("-n", namespace, "delete", "md", "probe")
        apply(kube, namespace, md("frozen", runtime=CPU))
        time.sleep(20)  # its first writes, and retries after 5, 10 s
        touch = [["annotate", "md", "frozen", f"example.com/touched={i}", "--overwrite"]
                 for i in range(8)]
        writes = _writes_while(operator, namespace, touch, kube, settle_s=1.0)
        assert writes <= 1, writes  # the retry 20 s after the last
    wait_phase(kube, namespace, "frozen", "Ready", timeout=90)


def test_a_refused_implicit_cache_is_not_asked_again_at_each_event_of_the_model(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """A ResourceQuota allows no ModelCache: the cache autoCache asks for is tried again at each
    resync (docs/operator.md); each event of the model asked again too, a refused create each."""
    quota(kube, namespace, "caches", "count/modelcaches.serving.kubemaas.io=0")
    n1, _ = two_nodes(kube)
    apply(kube, namespace, asking("auto", n1))
    wait_for(lambda: condition(status(kube, namespace, "auto"), "Ready").get("reason")
             == "Refused", timeout=30, what="model auto Refused")
    _quiet_under_annotations(kube, namespace, operator, "auto")


def test_a_refused_autoscaling_floor_is_not_asked_again_at_each_event_of_the_model(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """An admission policy allows at most 1 replica: the autoscaling floor's pin of 2 is tried
    again at each resync (docs/operator.md); each event of the model asked again too, a
    refused write each."""
    auto = {"signal": "queue", "target": 4, "minReplicas": 2, "maxReplicas": 3}
    with _policed(kube, namespace, expression="!has(object.spec.replicas) || "
                  "object.spec.replicas <= 1", message="at most 1 replica here"):
        apply(kube, namespace, md("floored", runtime=CPU, autoscaling=auto))
        wait_for(lambda: condition(status(kube, namespace, "floored"), "Ready").get("reason")
                 == "Refused", timeout=30, what="model floored Refused")
        ready = condition(_quiet_under_annotations(kube, namespace, operator, "floored"),
                          "Ready")
        assert ready["reason"] == "Refused" and "2 replica(s)" in ready["message"], ready
