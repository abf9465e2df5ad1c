"""A failed revision never takes the serving one down (against the real control plane).

For each kwok failure stage (`crash`: Ready, then CrashLoopBackOff a second later; `not-ready`;
`image-pull`) and each rollout mode (surge with a free GPU, replacement on a full cluster), a
2-replica model at revision 1 is updated to a failing revision while a sampler lists the model's
pods every 50 ms through the whole rollout and rollback. It records the Ready, live pods of the
stable revision and their UIDs. The stable Ready count never falls below replicas (surge) or
replicas - maxUnavailable (replace), and after the rollback the original pods that were never
taken down are the ones serving (surge: exactly the original two; the Deployment controller
waits spec.rollout.settleSeconds -- minReadySeconds -- before it counts a new pod as available,
so a pod that crashes right after its first Ready never replaces a serving one).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import Operator
from tests.cluster.test_operator import H100, apply, status
from tests.cluster.test_rollout import fill_h100
from tests.conftest import Kube, delete_namespace_and_its_pods
from tests.helpers import Poller, wait_for

pytestmark = pytest.mark.cluster

FAILURE_LABEL = "kubemaas.io/fake-failure"
REVISION_LABEL = "serving.kubemaas.io/revision"
REPLICAS = 2
DEADLINE = 10  # progressDeadlineSeconds: not-ready rolls back after it


def model(labels: dict[str, str] | None = None) -> str:
    spec: dict[str, Any] = {
        "model": {"uri": "s3://models/m.onnx", "format": "onnx"},
        "runtime": {"image": "ghcr.io/kubemaas/runtime:0.1.0"}, "replicas": REPLICAS,
        "gpu": {"count": 1, "products": [H100]},
        "rollout": {"maxSurge": 1, "maxUnavailable": 1,
                    "progressDeadlineSeconds": DEADLINE},
    }
    if labels:
        spec["podMetadata"] = {"labels": labels}
    return yaml.safe_dump({"apiVersion": "serving.kubemaas.io/v1alpha1",
                           "kind": "ModelDeployment", "metadata": {"name": "m"}, "spec": spec})


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


@dataclass
class Sample:
    t: float
    stable_ready: frozenset[str]  # UIDs of Ready, live pods of the stable revision
    stable_live: frozenset[str]  # UIDs of live (not terminating) pods of the stable revision
    bad_live: int  # live pods of any other revision
    bad_ready: int


@dataclass
class StableSampler(Poller):
    """Lists the model's pods every 50 ms and keeps what the stable revision looked like."""

    kube: Kube
    namespace: str
    stable: str  # the stable revision's hash (the pods' serving.kubemaas.io/revision)
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    strategies: set[str] = field(default_factory=set)  # status.rollout.strategy written

    def __enter__(self) -> StableSampler:
        # Every status the operator writes, from a watch that starts at the resourceVersion
        # read here: a strategy that lasts a fraction of a second (an image-pull revision rolls
        # back 0.4 s after the change) cannot fall between two reads, as it could when polled.
        from kubernetes import client

        md = client.CustomObjectsApi(self.kube.api).get_namespaced_custom_object(
            "serving.kubemaas.io", "v1alpha1", self.namespace, "modeldeployments", "m")
        self._record_strategy(md)
        self._watch_stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch,
                                         args=(md["metadata"]["resourceVersion"],), daemon=True)
        self._watcher.start()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._watch_stop.set()
        self._watcher.join(timeout=10)

    def _loop(self) -> None:
        """At a fixed rate (every 50 ms from the start, not 50 ms after each list), so that a
        slow API server makes the gaps no longer than it must."""
        start = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            self.poll()
            tick = max(tick + 1, int((time.monotonic() - start) / self.period))
            self._stop.wait(max(0.0, start + tick * self.period - time.monotonic()))

    def _record_strategy(self, md: dict[str, Any]) -> None:
        self.strategies.add(str(((md.get("status") or {}).get("rollout") or {}).get(
            "strategy", "")))

    def _watch(self, resource_version: str) -> None:
        from kubernetes import client, watch

        api = client.CustomObjectsApi(self.kube.api)
        while not self._watch_stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(api.list_namespaced_custom_object, "serving.kubemaas.io",
                                      "v1alpha1", self.namespace, "modeldeployments",
                                      field_selector="metadata.name=m",
                                      resource_version=resource_version, timeout_seconds=2):
                    obj = event["object"]
                    resource_version = obj["metadata"]["resourceVersion"]
                    self._record_strategy(obj)
                    if self._watch_stop.is_set():
                        w.stop()
            except Exception as err:  # noted, and the test fails on it
                self.errors.append(f"watch: {err!r}")
                return

    def poll(self) -> None:
        from kubernetes import client

        try:
            pods = client.CoreV1Api(self.kube.api).list_namespaced_pod(
                self.namespace, label_selector="app.kubernetes.io/instance=m").items
        except Exception as err:  # noted, and the test fails on it: no gap goes unseen
            self.errors.append(repr(err))
            return
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        stable = [p for p in live if (p.metadata.labels or {}).get(REVISION_LABEL) == self.stable]
        bad = [p for p in live if (p.metadata.labels or {}).get(REVISION_LABEL) != self.stable]
        self.samples.append(Sample(
            t=time.monotonic(),
            stable_ready=frozenset(p.metadata.uid for p in stable if _ready(p)),
            stable_live=frozenset(p.metadata.uid for p in stable),
            bad_live=len(bad), bad_ready=sum(1 for p in bad if _ready(p))))


def pods(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    out = kube.kubectl("-n", namespace, "get", "pods", "-l", "app.kubernetes.io/instance=m",
                       "-o", "json").stdout
    return list(json.loads(out)["items"])


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


@pytest.fixture
def gpu_ns(kube: Kube, namespace: str, operator: Operator) -> Iterator[str]:
    """A namespace that starts with no terminating pod anywhere (free GPUs are what the test
    makes) and whose GPU pods are gone before the next test counts free GPUs."""
    def settled() -> bool:
        items = json.loads(kube.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
        return not any(p["metadata"].get("deletionTimestamp") for p in items)
    wait_for(settled, timeout=60, what="terminating pods of earlier tests to be gone")
    yield namespace
    delete_namespace_and_its_pods(kube, namespace)


def _fail_and_roll_back(kube: Kube, ns: str, stable: str, failure: str,
                        started: float) -> tuple[StableSampler, dict[str, Any], float]:
    """Apply a failing revision while sampling the pods; return the sampler, the RolledBack
    status and the seconds from ``started`` to the rollback. Sampling goes on until revision 1
    runs on every pod again and for one more settle window."""
    with StableSampler(kube, ns, stable) as sampler:
        apply(kube, ns, model(labels={FAILURE_LABEL: failure}))
        rolled = wait_for(lambda: (lambda s: s if s.get("reason", "").startswith("RolledBack")
                                   else None)(status(kube, ns, "m")),
                          timeout=DEADLINE + 40, what="the rollback")
        rolled_back_after = time.monotonic() - started

        def back() -> bool:  # the Deployment and every pod on revision 1, all Ready
            current = pods(kube, ns)
            live = [p for p in current if not p["metadata"].get("deletionTimestamp")]
            return len(live) == REPLICAS and all(
                is_ready(p) and p["metadata"]["labels"].get(REVISION_LABEL) == stable
                for p in live)
        wait_for(back, timeout=60, what=f"{REPLICAS} Ready pods of revision 1 again")
        # The settled state for one more settle window (5 s): the time in which the stable pods
        # could still be scaled down. (An image-pull revision rolls back in under a second.)
        back_at = time.monotonic()
        wait_for(lambda: sampler.samples and sampler.samples[-1].t - back_at >= 5.0, timeout=30,
                 what="samples for a settle window after the rollback")
    return sampler, rolled, rolled_back_after


@pytest.mark.parametrize("mode", ["surge", "replace"])
@pytest.mark.parametrize("failure", ["crash", "not-ready", "image-pull"])
def test_a_failed_revision_never_takes_the_serving_one_down(kube: Kube, gpu_ns: str,
                                                            failure: str, mode: str) -> None:
    ns = gpu_ns
    # surge: one H100 free beside the model's two; replace: none.
    fill_h100(kube, ns, leave=REPLICAS + (1 if mode == "surge" else 0))
    apply(kube, ns, model())
    st = wait_for(lambda: (lambda s: s if ((s.get("rollout") or {}).get("current") or {}).get(
        "number") == 1 and s.get("phase") == "Ready" else None)(status(kube, ns, "m")),
        timeout=60, what="revision 1 Ready and settled")
    stable = st["rollout"]["current"]["hash"]
    original = {p["metadata"]["uid"] for p in pods(kube, ns) if is_ready(p)}
    assert len(original) == REPLICAS

    started = time.monotonic()
    sampler, rolled, rolled_back_after = _fail_and_roll_back(kube, ns, stable, failure, started)
    took = time.monotonic() - started

    samples = sampler.samples
    assert not sampler.errors, sampler.errors
    assert rolled["rollout"]["failed"]["number"] == 2
    assert ("Surge" if mode == "surge" else "Replace") in sampler.strategies, sampler.strategies
    assert ("Replace" if mode == "surge" else "Surge") not in sampler.strategies
    gaps = [b.t - a.t for a, b in pairwise(samples)]
    floor = REPLICAS if mode == "surge" else REPLICAS - 1
    counts = [len(s.stable_ready) for s in samples]
    low = min(counts)
    # The originals that were never taken down (none in a surge; at most maxUnavailable in a
    # replacement) must be the ones serving at the end.
    survivors = original.intersection(*(s.stable_live for s in samples))
    final = samples[-1].stable_ready
    print(f"{failure}/{mode}: {len(samples)} samples over {took:.1f} s (mean gap "
          f"{sum(gaps) / len(gaps) * 1000:.0f} ms, largest {max(gaps) * 1000:.0f} ms), "
          f"rolled back {rolled_back_after:.1f} s after the change; "
          f"stable Ready min {low} (floor {floor}); bad pods seen: live max "
          f"{max(s.bad_live for s in samples)}, Ready max {max(s.bad_ready for s in samples)}; "
          f"originals kept {len(survivors)}/{REPLICAS}, serving at the end: "
          f"{len(final & original)} original + {len(final - original)} new")
    assert len(samples) >= 20, f"{len(samples)} samples: the sampler fell behind"
    # The failing revision got a pod: the sampler saw one, or (an image-pull revision can be
    # rolled back between two samples) the rollback names the pod that failed.
    ready_message = next((c.get("message", "") for c in rolled.get("conditions") or []
                          if c.get("type") == "Ready"), "")
    named = re.search(r"\bpod m-[0-9a-z]+-[0-9a-z]+: ", ready_message)
    assert max(s.bad_live for s in samples) >= 1 or named, (
        f"the failing revision never got a pod: {ready_message!r}")
    if failure == "crash":  # the case minReadySeconds is for: Ready first, then it dies
        assert max(s.bad_ready for s in samples) >= 1, "no crashing pod was ever seen Ready"
    assert low >= floor, (f"stable Ready pods fell to {low} (floor {floor}) at sample "
                          f"{counts.index(low)} of {len(samples)}: {counts}")
    if mode == "surge":
        assert survivors == original, "a surge took an original pod down"
        assert final == original, "after the rollback other pods than the originals serve"
    else:
        assert len(survivors) >= REPLICAS - 1, "more than maxUnavailable originals went"
        assert survivors <= final, "an original pod that was kept does not serve at the end"
