"""The cluster's own policies refusing the operator's writes (not RBAC, not the object's schema):
a ValidatingAdmissionPolicy, a ResourceQuota. The model says what refused it and why, the
operator writes at most once per resync, and the model recovers by itself once the policy goes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import yaml

from tests.cluster.conftest import Operator
from tests.cluster.test_implicit_cache import asking, implicit_caches
from tests.cluster.test_modelcache import cache, cache_pods, cache_status, two_nodes
from tests.cluster.test_operator import apply, condition, md, status, wait_phase
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CPU = {"image": "ghcr.io/kubemaas/runtime:0.1.0", "resources": {"cpu": "1"}}


def _policy(name: str, namespace: str, expression: str = "false",
            message: str = "no Deployments here during the freeze") -> str:
    """Deny the Deployments created or updated in `namespace` (and their scale) for which
    `expression` is false, with reason Forbidden (a 403, like RBAC's) so that the operator must
    tell the two apart."""
    rules = [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
              "resources": ["deployments", "deployments/scale"]}]
    return yaml.safe_dump_all([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": rules},
                  "validations": [{"expression": expression, "reason": "Forbidden",
                                   "message": message}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"], "matchResources": {
             "namespaceSelector": {"matchLabels": {
                 "kubernetes.io/metadata.name": namespace}}}}}])


@contextmanager
def _policed(kube: Kube, namespace: str, **policy: str) -> Iterator[str]:
    name = f"policy-{namespace}"
    kube.kubectl("apply", "-f", "-", input=_policy(name, namespace, **policy))
    try:
        # the policy is enforced a moment after it is created
        wait_for(lambda: kube.kubectl("-n", namespace, "create", "deployment", "probe",
                                      "--image=x", "--replicas=2", "--dry-run=server",
                                      check=False).returncode != 0,
                 timeout=30, what="the admission policy to be enforced")
        yield name
    finally:
        kube.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                     name, "--ignore-not-found", check=False)


@pytest.fixture
def freeze(kube: Kube, namespace: str) -> Iterator[str]:
    with _policed(kube, namespace) as name:
        yield name


def _refused(kube: Kube, namespace: str, name: str) -> dict[str, object]:
    return wait_for(lambda: (lambda s: s if condition(s, "Ready").get("reason") == "Refused"
                             else None)(status(kube, namespace, name)), timeout=30,
                    what=f"model {name}'s status saying the cluster's policy refused it")


def test_a_deployment_denied_by_an_admission_policy_is_reported_and_retried(
        kube: Kube, namespace: str, operator: Operator, freeze: str) -> None:
    apply(kube, namespace, md("frozen", runtime=CPU))
    st = _refused(kube, namespace, "frozen")
    message = condition(st, "Ready")["message"]
    assert "ValidatingAdmissionPolicy" in message and "during the freeze" in message, message
    assert "ClusterRole" not in message, message  # not RBAC's advice
    assert st["phase"] == "Pending", st
    writes, passes = operator.writes_during(4, namespace)
    # a refused write a reconcile: each resync pass, and events of the model's own pods
    assert writes <= 2 * passes, (writes, passes)
    assert operator.alive()
    kube.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", freeze)
    wait_phase(kube, namespace, "frozen", "Ready", timeout=60)


def quota(kube: Kube, namespace: str, name: str, hard: str, *scopes: str) -> None:
    """A ResourceQuota `name` of `hard` (kubectl's --hard), once the quota controller counts
    every resource it limits: until then the API server refuses every object of a limited kind
    ('status unknown for quota'), not only those over the limit. The quota controller counts a
    custom resource (count/modelcaches.serving.kubemaas.io) once its discovery (every 30 s)
    has found the kind; a quota made before that is counted at its next full sync (5 min) or
    when it is made again, as here, on a control plane just started."""
    def counted() -> bool:
        found = kube.read(f"/api/v1/namespaces/{namespace}/resourcequotas/{name}")
        limited = set((found.get("spec") or {}).get("hard") or {})
        return bool(limited) and limited <= set((found.get("status") or {}).get("used") or {})

    deadline = time.monotonic() + 90
    while True:
        kube.kubectl("-n", namespace, "create", "quota", name, f"--hard={hard}",
                     *([f"--scopes={','.join(scopes)}"] if scopes else []))
        try:
            wait_for(counted, timeout=5, what=f"the quota controller to count quota {name}")
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        kube.kubectl("-n", namespace, "delete", "quota", name, "--wait=true")


def test_an_implicit_cache_over_the_quota_is_reported_and_created_once_raised(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """A namespace's ResourceQuota allows no ModelCache: the model asking for one (autoCache)
    got no status at all, the operator logging 'cannot create or share the model cache ...
    exceeded quota' and asking again every few seconds."""
    quota(kube, namespace, "caches", "count/modelcaches.serving.kubemaas.io=0")
    n1, _ = two_nodes(kube)
    apply(kube, namespace, asking("auto", n1))
    st = _refused(kube, namespace, "auto")
    message = condition(st, "Ready")["message"]
    assert "model cache" in message and "exceeded quota" in message, message
    assert st["phase"] == "Pending", st
    writes, passes = operator.writes_during(4, namespace)
    assert writes <= 2 * passes, (writes, passes)
    kube.kubectl("-n", namespace, "patch", "quota", "caches", "--type=merge", "-p",
                 '{"spec":{"hard":{"count/modelcaches.serving.kubemaas.io":"1"}}}')
    wait_for(lambda: implicit_caches(kube, namespace) or None, timeout=60,
             what="the model cache once the quota allows it")
    wait_for(lambda: (lambda s: s if condition(s, "Ready").get("reason") == "CacheNotReady"
                      else None)(status(kube, namespace, "auto")), timeout=30,
             what="model auto waiting for its cache")


def test_an_autoscaling_floor_denied_by_an_admission_policy_is_reported(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """The Deployment is created (1 replica), the autoscaling floor's pin to minReplicas 2 is
    denied: the model got no status at all, the operator logging 'cannot set the replicas of the
    Deployment ... to the autoscaling floor (2)' and asking again every few seconds."""
    auto = {"signal": "queue", "target": 4, "minReplicas": 2, "maxReplicas": 3}
    with _policed(kube, namespace, expression="!has(object.spec.replicas) || "
                  "object.spec.replicas <= 1", message="at most 1 replica here") as name:
        apply(kube, namespace, md("floored", runtime=CPU, autoscaling=auto))
        st = _refused(kube, namespace, "floored")
        message = condition(st, "Ready")["message"]
        assert "2 replica(s)" in message and "at most 1 replica here" in message, message
        writes, passes = operator.writes_during(4, namespace)
        assert writes <= 2 * passes, (writes, passes)
        kube.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                     name)
        wait_for(lambda: (lambda s: s if s.get("readyReplicas") == 2 else None)(
            status(kube, namespace, "floored")), timeout=60, what="floored at 2 replicas")


def test_a_cache_pod_over_the_quota_is_refused_quietly_and_started_once_raised(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """A ResourceQuota of 0 pods: the cache went Failed/PodRejected and the operator created the
    refused download pod again every second, for ever."""
    quota(kube, namespace, "pods", "pods=0")
    n1, _ = two_nodes(kube)
    apply(kube, namespace, cache("quota", [n1]))
    st = wait_for(lambda: (lambda s: s if s.get("reason") == "Refused" else None)(
        cache_status(kube, namespace, "quota")), timeout=30, what="the cache Refused")
    assert st["phase"] == "Pending" and "exceeded quota" in st["message"], st
    # Node events wake every cache; each used to ask for the refused pod again (a CI run saw 4
    # writes in 10 passes). A label touched every 2 s through the window makes that path certain.
    stop = threading.Event()
    touching = threading.Thread(target=_touch_labels, args=(kube, n1, stop, 2.0))
    touching.start()
    try:
        writes, passes = operator.writes_during(4, namespace)
    finally:
        stop.set()
        touching.join()
        kube.kubectl("label", "node", n1, "kubemaas-test-touch-")
    assert writes <= 2, (writes, passes)  # a refused pod every 30 s, not at each wake
    kube.kubectl("-n", namespace, "patch", "quota", "pods", "--type=merge", "-p",
                 '{"spec":{"hard":{"pods":"5"}}}')
    wait_for(lambda: cache_pods(kube, namespace, "quota") or None, timeout=60,
             what="the download pod once the quota allows it")


def _touch_labels(kube: Kube, node: str, stop: threading.Event, every_s: float) -> None:
    """Change a label of `node` every `every_s` until `stop`: a node event each time."""
    i = 0
    while not stop.wait(every_s):
        kube.kubectl("label", "node", node, f"kubemaas-test-touch={i}", "--overwrite")
        i += 1


def _down_webhook(name: str, namespace: str, group: str = "apps",
                  resource: str = "deployments") -> str:
    """A validating webhook for the `resource` of `namespace` that nothing answers (a port on
    127.0.0.1 no one listens on), failurePolicy Fail: the API server fails each write with a
    500 'failed calling webhook ... connection refused', as when a webhook's pods are down."""
    return yaml.safe_dump({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "down.webhook.kubemaas.test", "admissionReviewVersions": ["v1"],
            "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 3,
            "clientConfig": {"url": "https://127.0.0.1:1/validate"},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "rules": [{"apiGroups": [group], "apiVersions": ["v1"],
                       "operations": ["CREATE", "UPDATE"], "resources": [resource]}]}]})


@contextmanager
def webhook_down(kube: Kube, namespace: str) -> Iterator[None]:
    """A webhook on the namespace's Deployments that nothing answers (_down_webhook), called,
    for a block."""
    name = f"down-{namespace}"
    kube.kubectl("apply", "-f", "-", input=_down_webhook(name, namespace))
    try:
        wait_for(lambda: "failed calling webhook" in kube.kubectl(
            "-n", namespace, "create", "deployment", "probe", "--image=x", "--dry-run=server",
            check=False).stderr, timeout=30, what="the webhook to be called")
        yield
    finally:
        kube.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found",
                     check=False)


def test_a_write_a_webhook_keeps_failing_is_reported_and_goes_through_later(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """A webhook that is down failed every apply of the Deployment with a 500: the operator
    logged a retry every 5 s for ever and the model's status said nothing of it."""
    apply(kube, namespace, md("hooked", runtime=CPU))
    wait_phase(kube, namespace, "hooked", "Ready", timeout=60)
    with webhook_down(kube, namespace):
        apply(kube, namespace, md("hooked", runtime=CPU, replicas=2))
        st = wait_for(lambda: (lambda s: s if condition(s, "Ready").get("reason") == "ApiError"
                                else None)(status(kube, namespace, "hooked")), timeout=60,
                      what="model hooked's status saying the API server fails its writes")
        message = condition(st, "Ready")["message"]
        assert "failed calling webhook" in message and "Deployment" in message, message
        assert st["phase"] == "Degraded" and st["readyReplicas"] == 1, st  # still serving
        assert condition(st, "Available")["status"] == "True", st
    wait_for(lambda: (lambda s: s if s.get("readyReplicas") == 2 and s.get("phase") == "Ready"
                      else None)(status(kube, namespace, "hooked")), timeout=90,
             what="hooked at 2 replicas once the webhook is gone")


def test_a_cache_pod_a_webhook_keeps_failing_is_reported_and_started_later(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """A webhook on pods that is down: the ModelCache's download pod could not be created, the
    operator logged a retry every 5 s for ever and the cache's status said nothing of it."""
    name = f"down-pods-{namespace}"
    kube.kubectl("apply", "-f", "-", input=_down_webhook(name, namespace, "", "pods"))
    try:
        wait_for(lambda: "failed calling webhook" in kube.kubectl(
            "-n", namespace, "run", "probe", "--image=x", "--dry-run=server",
            check=False).stderr, timeout=30, what="the webhook to be called")
        n1, _ = two_nodes(kube)
        apply(kube, namespace, cache("hooked", [n1]))
        st = wait_for(lambda: (lambda s: s if s.get("reason") == "ApiError" else None)(
            cache_status(kube, namespace, "hooked")), timeout=60,
            what="the cache's status saying the API server fails its writes")
        assert "failed calling webhook" in st["message"] and st["phase"] == "Pending", st
        assert "ApiError" in kube.kubectl("-n", namespace, "get", "events", "-o",
                                          "jsonpath={.items[*].reason}").stdout
    finally:
        kube.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found",
                     check=False)
    wait_for(lambda: cache_pods(kube, namespace, "hooked") or None, timeout=90,
             what="the download pod once the webhook is gone")
