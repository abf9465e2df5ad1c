"""The API server's refusals read into ApiError (the body is a Status)."""

from __future__ import annotations

import json

from kubemaas_operator.k8s import refusal

# What kube-apiserver answered when the model-cache operator created an evict pod in a
# namespace being deleted (NamespaceLifecycle admission).
TERMINATING = json.dumps({
    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
    "message": 'pods "victim-evict-9fdc4a0e7e" is forbidden: unable to create new content in '
               "namespace t-faf1687f-held because it is being terminated",
    "reason": "Forbidden",
    "details": {"name": "victim-evict-9fdc4a0e7e", "kind": "pods", "causes": [
        {"reason": "NamespaceTerminating", "message": "namespace t-faf1687f-held is being "
         "terminated", "field": "metadata.namespace"}]},
    "code": 403})


def test_a_pod_refused_in_a_terminating_namespace() -> None:
    err = refusal(403, TERMINATING)
    assert err.namespace_terminating
    assert err.reason == "Forbidden" and "being terminated" in err.message
    assert not err.invalid


def test_other_refusals_are_not_read_as_a_terminating_namespace() -> None:
    psa = json.dumps({"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
                      "message": 'pods "x" is forbidden: violates PodSecurity "restricted"'})
    assert not refusal(403, psa).namespace_terminating
    assert refusal(422, json.dumps({"reason": "Invalid", "message": "bad"})).invalid


def test_a_body_that_is_not_a_status_keeps_its_text() -> None:
    err = refusal(502, "<html>bad gateway</html>")
    assert (err.status, err.reason, err.message) == (502, "", "<html>bad gateway</html>")
    assert refusal(500, "[1, 2]").message == "[1, 2]"


def test_an_apply_that_does_not_fit_the_schema_is_invalid_not_transient() -> None:
    # what server-side apply answered for an affinity of the wrong shape (a 500, yet permanent)
    body = json.dumps({"kind": "Status", "status": "Failure", "code": 500, "message": (
        "failed to create typed patch object (p/af3; apps/v1, Kind=Deployment): "
        ".spec.template.spec.topologySpreadConstraints[0].garbage: field not declared in "
        "schema")})
    assert refusal(500, body).invalid
    assert not refusal(500, json.dumps({"message": "etcdserver: request timed out"})).invalid


def _status(code: int, reason: str, message: str) -> str:
    return json.dumps({"kind": "Status", "status": "Failure", "code": code, "reason": reason,
                       "message": message})


def test_a_policy_of_the_cluster_is_told_from_the_object_and_from_rbac() -> None:
    # what kube-apiserver 1.36 answered the operator's apply of a Deployment (a
    # ValidatingAdmissionPolicy with no reason set: a 422, like a schema error, yet the same
    # manifest is taken once the policy goes)
    vap = _status(422, "Invalid", 'deployments.apps "m1" is forbidden: ValidatingAdmissionPolicy '
                  "'no-big' with binding 'no-big' denied request: not allowed")
    assert refusal(422, vap).policy_refused
    webhook = _status(400, "BadRequest", 'admission webhook "v.example.com" denied the request: no')
    assert refusal(400, webhook).policy_refused
    quota = _status(403, "Forbidden", 'services "m" is forbidden: exceeded quota: q, requested: '
                    "count/services=1, used: count/services=1, limited: count/services=1")
    assert refusal(403, quota).policy_refused
    limits = _status(403, "Forbidden", 'persistentvolumeclaims "c" is forbidden: maximum storage '
                     "usage per PersistentVolumeClaim is 1Gi, but request is 5Gi")
    assert refusal(403, limits).policy_refused
    rbac = _status(403, "Forbidden", 'scaledobjects.keda.sh "m" is forbidden: User "system:'
                   'serviceaccount:kubemaas-system:kubemaas-operator" cannot patch resource '
                   '"scaledobjects" in API group "keda.sh" in the namespace "t"')
    assert not refusal(403, rbac).policy_refused
    schema = _status(422, "Invalid", 'Deployment.apps "m" is invalid: spec.template.spec.'
                     "containers[0].resources.requests: Invalid value: \"2\": must be less than "
                     "or equal to cpu limit of 1")
    assert not refusal(422, schema).policy_refused
    assert not refusal(409, _status(409, "Conflict", "exceeded quota")).policy_refused
