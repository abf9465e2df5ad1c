"""A policy of the cluster refusing the operator's writes of its own objects: a ModelDeployment's
status subresource (the status cannot say so, so an Event and the operator's log do, once), a
ModelCache's finalizer (its status says so)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import yaml

from tests.cluster.conftest import Operator
from tests.cluster.test_modelcache import cache, cache_status, two_nodes
from tests.cluster.test_operator import apply, md, wait_phase
from tests.cluster.test_operator_refusals import CPU
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

SAYS = "the status of models is frozen here"


def _status_policy(name: str, namespace: str, resource: str = "modeldeployments/status",
                   reason: str = "Forbidden") -> str:
    rules = [{"apiGroups": ["serving.kubemaas.io"], "apiVersions": ["*"],
              "operations": ["UPDATE"], "resources": [resource]}]
    return yaml.safe_dump_all([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": rules},
                  "validations": [{"expression": "false", "reason": reason,
                                   "message": SAYS}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"], "matchResources": {
             "namespaceSelector": {"matchLabels": {
                 "kubernetes.io/metadata.name": namespace}}}}}])


def _events(kube: Kube, namespace: str) -> list[dict[str, object]]:
    out = kube.kubectl("-n", namespace, "get", "events", "--field-selector",
                       "involvedObject.kind=ModelDeployment,involvedObject.name=frozen",
                       "-o", "json").stdout
    return [e for e in json.loads(out)["items"] if e.get("reason") == "StatusRefused"]


@contextmanager
def status_policed(kube: Kube, namespace: str) -> Iterator[None]:
    """A policy that refuses every status write of the namespace's models, enforced (a probe
    model's status refused), for a block."""
    name = f"status-{namespace}"
    kube.kubectl("apply", "-f", "-", input=_status_policy(name, namespace))
    try:
        apply(kube, namespace, md("probe", runtime=CPU))  # enforced once this is refused
        wait_for(lambda: "denied" in kube.kubectl(
            "-n", namespace, "patch", "md", "probe", "--subresource=status", "--type=merge",
            "-p", '{"status":{"phase":"Pending"}}', check=False).stderr,
            timeout=30, what="the status policy to be enforced")
        yield
    finally:
        kube.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                     name, "--ignore-not-found", check=False)


def test_a_refused_status_write_is_reported_once_by_an_event_and_the_log(
        kube: Kube, namespace: str, operator: Operator) -> None:
    with status_policed(kube, namespace):
        log_start = len(operator.log_text())
        apply(kube, namespace, md("frozen", runtime=CPU))
        event = wait_for(lambda: _events(kube, namespace) or None, timeout=30,
                         what="a StatusRefused Event on the model")[0]
        assert event["type"] == "Warning" and SAYS in str(event["message"]), event
        time.sleep(20)  # four 5-second retries of old
        events = _events(kube, namespace)
        assert len(events) == 1 and events[0].get("count", 1) == 1, events
        lines = [ln for ln in operator.log_text()[log_start:].splitlines()
                 if "/frozen" in ln and SAYS in ln]
        assert len(lines) == 1, lines
    wait_phase(kube, namespace, "frozen", "Ready", timeout=90)


def test_a_refused_cache_finalizer_is_reported_in_the_caches_status(
        kube: Kube, namespace: str, operator: Operator) -> None:
    """A policy denying updates of ModelCaches (reason Invalid: a 422) refuses the cleanup
    finalizer the operator adds first."""
    name = f"caches-{namespace}"
    kube.kubectl("apply", "-f", "-", input=_status_policy(name, namespace, "modelcaches",
                                                          "Invalid"))
    try:
        apply(kube, namespace, cache("probe", two_nodes(kube)))
        wait_for(lambda: "denied" in kube.kubectl(
            "-n", namespace, "label", "modelcache", "probe", "x=y", check=False).stderr,
            timeout=30, what="the cache policy to be enforced")
        log_start = len(operator.log_text())
        apply(kube, namespace, cache("frozen", two_nodes(kube)))
        st = wait_for(lambda: (lambda s: s if SAYS in str(s.get("message")) else None)(
            cache_status(kube, namespace, "frozen")), timeout=40,
            what="the cache's status saying its finalizer was refused")
        print(st)
        assert st.get("phase") in ("Pending", None, ""), st
        time.sleep(10)
        lines = [ln for ln in operator.log_text()[log_start:].splitlines()
                 if "/frozen" in ln and SAYS in ln]
        assert len(lines) <= 1, lines
    finally:
        kube.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                     name, "--ignore-not-found", check=False)
    wait_for(lambda: "serving.kubemaas.io/model-cache-cleanup" in kube.kubectl(
        "-n", namespace, "get", "modelcache", "frozen", "-o",
        "jsonpath={.metadata.finalizers}").stdout, timeout=90, what="the finalizer once allowed")
