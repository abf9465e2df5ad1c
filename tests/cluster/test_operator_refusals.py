"""The cluster's own policies refusing the operator's writes (not RBAC, not the object's schema):
a ValidatingAdmissionPolicy, a ResourceQuota. The model says what refused it and why, the
operator writes at most once per resync, and the model recovers by itself once the policy goes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from tests.cluster.conftest import Operator
from tests.cluster.test_implicit_cache import asking, implicit_caches
from tests.cluster.test_modelcache import two_nodes
from tests.cluster.test_operator import apply, condition, md, status, wait_phase
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CPU = {"image": "ghcr.io/kubemaas/runtime:0.1.0", "resources": {"cpu": "1"}}


def _policy(name: str, namespace: str) -> str:
    """Deny every Deployment created or updated in `namespace`, with reason Forbidden (a 403,
    like RBAC's) so that the operator must tell the two apart."""
    rules = [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
              "resources": ["deployments"]}]
    return yaml.safe_dump_all([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": rules},
                  "validations": [{"expression": "false", "reason": "Forbidden",
                                   "message": "no Deployments here during the freeze"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"], "matchResources": {
             "namespaceSelector": {"matchLabels": {
                 "kubernetes.io/metadata.name": namespace}}}}}])


@pytest.fixture
def freeze(kube: Kube, namespace: str) -> Iterator[str]:
    name = f"freeze-{namespace}"
    kube.kubectl("apply", "-f", "-", input=_policy(name, namespace))
    try:
        yield name
    finally:
        kube.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                     name, "--ignore-not-found", check=False)


def _refused(kube: Kube, namespace: str, name: str) -> dict[str, object]:
    return wait_for(lambda: (lambda s: s if condition(s, "Ready").get("reason") == "Refused"
                             else None)(status(kube, namespace, name)), timeout=30,
                    what=f"model {name}'s status saying the cluster's policy refused it")


def test_a_deployment_denied_by_an_admission_policy_is_reported_and_retried(
        kube: Kube, namespace: str, operator: Operator, freeze: str) -> None:
    # the policy is enforced a moment after it is created
    wait_for(lambda: kube.kubectl("-n", namespace, "create", "deployment", "probe",
                                  "--image=x", "--dry-run=server", check=False).returncode != 0,
             timeout=30, what="the admission policy to be enforced")
    apply(kube, namespace, md("frozen", runtime=CPU))
    st = _refused(kube, namespace, "frozen")
    message = condition(st, "Ready")["message"]
    assert "ValidatingAdmissionPolicy" in message and "during the freeze" in message, message
    assert "ClusterRole" not in message, message  # not RBAC's advice
    assert st["phase"] == "Pending", st
    before = operator.wait_resyncs(1)
    after = operator.wait_resyncs(4)
    writes, passes = (after[k] - before[k] for k in ("apiWrites", "resyncs"))
    assert writes <= passes + 1, (writes, passes)  # the refused apply once a pass, no hot loop
    assert operator.alive()
    kube.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", freeze)
    wait_phase(kube, namespace, "frozen", "Ready", timeout=60)


def test_an_implicit_cache_over_the_quota_is_reported_and_created_once_raised(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """A namespace's ResourceQuota allows no ModelCache: the model asking for one (autoCache)
    got no status at all, the operator logging 'cannot create or share the model cache ...
    exceeded quota' and asking again every few seconds."""
    kube.kubectl("-n", namespace, "create", "quota", "caches",
                 "--hard=count/modelcaches.serving.kubemaas.io=0")
    wait_for(lambda: kube.kubectl("-n", namespace, "get", "quota", "caches", "-o",
                                  "jsonpath={.status.hard}", check=False).stdout or None,
             timeout=30, what="the quota controller to fill in the quota's status")
    n1, _ = two_nodes(kube)
    apply(kube, namespace, asking("auto", n1))
    st = _refused(kube, namespace, "auto")
    message = condition(st, "Ready")["message"]
    assert "model cache" in message and "exceeded quota" in message, message
    assert st["phase"] == "Pending", st
    before = operator.wait_resyncs(1)
    after = operator.wait_resyncs(4)
    writes, passes = (after[k] - before[k] for k in ("apiWrites", "resyncs"))
    assert writes <= passes + 1, (writes, passes)
    kube.kubectl("-n", namespace, "patch", "quota", "caches", "--type=merge", "-p",
                 '{"spec":{"hard":{"count/modelcaches.serving.kubemaas.io":"1"}}}')
    wait_for(lambda: implicit_caches(kube, namespace) or None, timeout=60,
             what="the model cache once the quota allows it")
    wait_for(lambda: (lambda s: s if condition(s, "Ready").get("reason") == "CacheNotReady"
                      else None)(status(kube, namespace, "auto")), timeout=30,
             what="model auto waiting for its cache")
