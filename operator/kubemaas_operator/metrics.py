"""The operator's own Prometheus metrics (prometheus-client), served on GET /metrics of
KUBEMAAS_OPERATOR_METRICS_PORT (docs/operator.md lists them).

Counters and histograms are updated where things happen (handlers: reconciles and resync passes;
workqueue: queue waits; k8s: API writes and errors; reconcile: rollouts that ended); the gauges
of the queue and of the models by phase and reason are computed when Prometheus scrapes, from
the work queue and the in-memory index of ModelDeployments, so they cost nothing between
scrapes.
"""

from __future__ import annotations

import json
import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger("kubemaas.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RECONCILE_DURATION = Histogram(
    "kubemaas_operator_reconcile_duration_seconds",
    "Time of one reconcile of a ModelDeployment, by outcome: ok (applied what was needed), "
    "failed (the spec cannot be served; reported in its status), retry (a transient error; "
    "requeued), error (an unexpected exception).", ["outcome"], buckets=_BUCKETS,
    registry=REGISTRY)
QUEUE_ADDS = Counter("kubemaas_operator_workqueue_adds_total",
                     "Reconciles queued (requests for a model already waiting are coalesced "
                     "and not counted).", registry=REGISTRY)
QUEUE_WAIT = Histogram("kubemaas_operator_workqueue_wait_seconds",
                       "How long a queued reconcile waited before it started.",
                       buckets=_BUCKETS, registry=REGISTRY)
API_ERRORS = Counter("kubemaas_operator_api_errors_total",
                     "Kubernetes API calls that failed, by HTTP method and status code (0 = the "
                     "API server could not be reached).", ["method", "code"], registry=REGISTRY)
API_WRITES = Counter("kubemaas_operator_api_writes_total",
                     "Kubernetes API write requests (every method but GET, refused ones too), by "
                     "the namespace of the object written (\"\" for cluster-scoped ones): a "
                     "steady state writes nothing, so a rate here is write churn.", ["namespace"],
                     registry=REGISTRY)
RESYNC_PASSES = Counter("kubemaas_operator_resync_passes_total",
                        "Periodic resync passes started (each queues a reconcile of every "
                        "model; none while peering keeps this replica on standby).",
                        registry=REGISTRY)
ROLLOUTS = Counter("kubemaas_operator_rollouts_total",
                   "Rollouts that ended, by outcome (Complete, RolledBack, Superseded), as "
                   "entered in status.rollout.history.", ["outcome"], registry=REGISTRY)
for _outcome in ("ok", "failed", "retry", "error"):
    RECONCILE_DURATION.labels(_outcome)
for _rollout in ("Complete", "RolledBack", "Superseded"):
    ROLLOUTS.labels(_rollout)


QUEUE_DEPTH = Gauge("kubemaas_operator_workqueue_depth",
                    "Reconciles queued and not started yet.", registry=REGISTRY)
QUEUE_AGE = Gauge("kubemaas_operator_workqueue_oldest_seconds",
                  "Age of the oldest queued reconcile that has not started (0 when none).",
                  registry=REGISTRY)


def watch_queue(queue: Any) -> None:
    QUEUE_DEPTH.set_function(lambda: float(queue.depth()))
    QUEUE_AGE.set_function(lambda: float(queue.oldest_age()))


class ModelsCollector(Collector):
    """kubemaas_operator_models{phase, reason}: ModelDeployments by status phase and reason,
    counted at scrape time from the operator's index (packed JSON of each object)."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[str]] | None = None

    def describe(self) -> Iterable[Any]:
        return [GaugeMetricFamily("kubemaas_operator_models",
                                  "ModelDeployments by status phase and reason.",
                                  labels=["phase", "reason"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kubemaas_operator_models",
                                   "ModelDeployments by status phase and reason.",
                                   labels=["phase", "reason"])
        source = self.source
        for (phase, reason), n in sorted(count_models(source() if source else ()).items()):
            family.add_metric([phase, reason], n)
        yield family


def count_models(packed: Iterable[str]) -> Tally[tuple[str, str]]:
    """(phase, reason) -> how many, from packed ModelDeployments (no status yet = Pending)."""
    tally: Tally[tuple[str, str]] = Tally()
    for text in packed:
        try:
            status = json.loads(text).get("status") or {}
        except ValueError:
            continue
        tally[(str(status.get("phase") or "Pending"), str(status.get("reason") or ""))] += 1
    return tally


MODELS = ModelsCollector()
REGISTRY.register(MODELS)


def ended_rollouts(previous: Mapping[str, Any], status: Mapping[str, Any]) -> list[str]:
    """The outcomes of status.rollout.history entries that `status` adds to `previous`."""
    def entries(st: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        history = ((st.get("rollout") or {}).get("history")) or []
        return [(h.get("number"), h.get("hash"), h.get("outcome"), h.get("time"))
                for h in history if isinstance(h, Mapping)]

    before = set(entries(previous))
    return [str(e[2]) for e in entries(status) if e not in before and e[2]]


def count_rollouts(previous: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    for outcome in ended_rollouts(previous, status):
        ROLLOUTS.labels(outcome).inc()


def api_error(method: str, code: int) -> None:
    API_ERRORS.labels(method, str(code)).inc()


def api_write(namespace: str) -> None:
    API_WRITES.labels(namespace).inc()


def forget_namespace(namespace: str) -> None:
    """Drop the series of a namespace that was deleted (one would stay for every namespace
    ever written to; none if nothing was written there); a write that comes after starts it
    again from 0."""
    API_WRITES.remove(namespace)


def serve(port: int) -> Any:
    """Start GET /metrics on `port` (a thread); None when the port is 0 or cannot be bound."""
    if not port:
        return None
    try:
        server, _thread = start_http_server(port, addr="0.0.0.0", registry=REGISTRY)
    except OSError as err:
        log.error("cannot serve the operator's metrics on port %d: %s", port, err)
        return None
    log.info("operator metrics on :%d/metrics", port)
    return server
