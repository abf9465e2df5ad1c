"""The operator's own /metrics (prometheus-client), scraped over 127.0.0.1 as Prometheus would:
the reconcile and work-queue series move as models are applied, models are counted by phase and
reason, and the exposition parses with Prometheus's own parser."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.conftest import Operator
from tests.cluster.test_operator import apply, md, wait_phase
from tests.conftest import Kube, delete_namespace_and_its_pods
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster


def scrape(operator: Operator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics",
                                timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


def test_reconcile_and_queue_series_move_as_models_are_applied(
        kube: Kube, namespace: str, operator: Operator) -> None:
    before = scrape(operator)
    for series in ("kubemaas_operator_reconcile_duration_seconds_count",
                   "kubemaas_operator_workqueue_adds_total",
                   "kubemaas_operator_workqueue_wait_seconds_count",
                   "kubemaas_operator_workqueue_depth",
                   "kubemaas_operator_workqueue_oldest_seconds",
                   "kubemaas_operator_rollouts_total",
                   "process_resident_memory_bytes"):
        assert any(n == series for n, _ in before), f"{series} is not exposed"
    ok_before = total(before, "kubemaas_operator_reconcile_duration_seconds_count", outcome="ok")
    adds_before = total(before, "kubemaas_operator_workqueue_adds_total")
    waits_before = total(before, "kubemaas_operator_workqueue_wait_seconds_count")
    rollouts_before = total(before, "kubemaas_operator_rollouts_total", outcome="Complete")

    for i in range(3):
        apply(kube, namespace, md(f"scraped-{i}"))
    apply(kube, namespace, md("scraped-bad", gpu={"count": 1, "products": ["NVIDIA-B200"]}))
    for i in range(3):
        wait_phase(kube, namespace, f"scraped-{i}", "Ready")
    wait_phase(kube, namespace, "scraped-bad", "Failed")

    seen: list[tuple[float, float, float]] = []

    def moved() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        now = scrape(operator)
        ok = total(now, "kubemaas_operator_reconcile_duration_seconds_count", outcome="ok")
        failed = total(now, "kubemaas_operator_reconcile_duration_seconds_count",
                       outcome="failed")
        ready = total(now, "kubemaas_operator_models", phase="Ready")
        seen[:] = [(ok - ok_before, failed, ready)]
        return now if (ok >= ok_before + 3 and failed >= 1 and ready >= 3) else None

    try:
        after = wait_for(moved, timeout=30, what="the reconcile series to count the new models")
    except AssertionError as err:
        raise AssertionError(f"{err}; (ok reconciles since, failed, Ready models): "
                             f"{seen}") from None
    # Each model queued at least one reconcile, and each waited in the queue before it ran.
    assert total(after, "kubemaas_operator_workqueue_adds_total") >= adds_before + 4
    assert total(after, "kubemaas_operator_workqueue_wait_seconds_count") >= waits_before + 4
    assert total(after, "kubemaas_operator_reconcile_duration_seconds_sum") > 0
    # Each new model's first revision completes: a rollout ended with outcome Complete.
    wait_for(lambda: total(scrape(operator), "kubemaas_operator_rollouts_total",
                           outcome="Complete") >= rollouts_before + 3, timeout=30,
             what="three completed rollouts counted")
    failed_models = [dict(ls) for (n, ls), v in after.items()
                     if n == "kubemaas_operator_models" and dict(ls)["phase"] == "Failed" and v]
    assert failed_models, "the Failed model is not counted"
    assert all(m["reason"] for m in failed_models)


def test_api_errors_are_counted_by_code(kube: Kube, namespace: str,
                                        operator: Operator) -> None:
    """A Deployment the API server refuses (422) is counted once: the operator does not ask
    again with the same manifest."""
    before = total(scrape(operator), "kubemaas_operator_api_errors_total", method="PATCH",
                   code="422")
    bad_affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Sometimes"}]}]}}}
    apply(kube, namespace, md("refused", scheduling={"affinity": bad_affinity}))
    wait_phase(kube, namespace, "refused", "Failed")
    def counted() -> float | None:
        now = total(scrape(operator), "kubemaas_operator_api_errors_total", method="PATCH",
                    code="422")
        return now if now >= before + 1 else None

    wait_for(counted, timeout=10, what="the 422 to be counted")



def test_a_deleted_namespace_leaves_no_api_writes_series(kube: Kube, namespace: str,
                                                         operator: Operator) -> None:
    """kubemaas_operator_api_writes_total{namespace} kept one series per namespace ever written
    to, deleted ones too (a series per test namespace, forever): the namespace's series goes
    once the namespace itself is deleted."""
    apply(kube, namespace, md("counted"))
    wait_phase(kube, namespace, "counted", "Ready")
    writes = "kubemaas_operator_api_writes_total"
    assert total(scrape(operator), writes, namespace=namespace) > 0
    delete_namespace_and_its_pods(kube, namespace)
    wait_for(lambda: kube.gone(f"/api/v1/namespaces/{namespace}"), timeout=120,
             what=f"namespace {namespace} to be deleted")
    wait_for(lambda: not any(n == writes and dict(ls).get("namespace") == namespace
                             for n, ls in scrape(operator)), timeout=10,
             what=f"the {writes} series of namespace {namespace} to go")
    assert namespace not in operator.counters()["apiWritesByNamespace"]
