"""The chart on a real control plane, end to end, in the order a user lives it:

  helm install (the previous chart version, 0.0.1) into a namespace that enforces the
  `restricted` Pod Security Standard -> the operator process runs under the chart's
  ServiceAccount token (real RBAC) -> `kubectl apply -f examples/...` reaches Ready ->
  helm upgrade to this chart with the models in place (still Ready after) -> RBAC: exactly the
  rules file, nothing more, and a missing rule breaks a named operation -> Pod Security of the
  model pods -> the runtime started on 127.0.0.1 from the container spec the operator wrote
  answers an inference -> helm uninstall keeps the CRD (and so the models).

A private testbed of its own: the chart owns cluster-wide objects (ClusterRole, CRD) that the
other cluster tests install with kubectl, and helm refuses to adopt them. The operator's pod
that helm creates is simulated by kwok (admitted, scheduled, Running, no process); the
operator that does the work is `python -m kubemaas_operator` on this machine.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_testbed.cluster import free_port, wait_established
from kubemaas_testbed.processes import stop_child
from tests.chart.helm import CHART, PREVIOUS, RBAC, ROOT, helm
from tests.cluster.conftest import OPERATOR_NAMESPACE, Operator
from tests.conftest import Kube
from tests.helpers import http_json, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

EXAMPLES = ROOT / "examples"
SA = f"system:serviceaccount:{OPERATOR_NAMESPACE}:kubemaas-operator"
MODELS = "models"  # the namespace of the examples, labelled restricted like the operator's
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
MODEL_HOST = "https://raw.githubusercontent.com/kubemaas/kubemaas/main/"
PINNED_IMAGE = "registry.test/kubemaas/runtime"


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    from kubemaas_testbed.cluster import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("chart-testbed"))
    try:
        cluster.up(log=lambda msg: print(f"[chart testbed] {msg}"))
        yield Kube(cluster.kubeconfig, log_dir=cluster.state / "logs")
    finally:
        cluster.processes.stop_all(["kwok", "kube-scheduler", "kube-controller-manager",
                                    "kube-apiserver", "etcd"])


@pytest.fixture(scope="module")
def operator_process(testbed: Kube, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[Operator]:
    """Not started here: test_install starts it once the chart has made its ServiceAccount."""
    workdir = tmp_path_factory.mktemp("chart-operator")
    op = Operator(kube=testbed, workdir=workdir, log=workdir / "operator.log")
    try:
        yield op
    finally:
        op.stop()


def _namespace(kube: Kube, name: str, labels: dict[str, str]) -> None:
    manifest = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels}}
    kube.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def _json(kube: Kube, *args: str) -> Any:
    return json.loads(kube.kubectl(*args, "-o", "json").stdout)


def _ready(kube: Kube, namespace: str, name: str) -> bool:
    md = _json(kube, "-n", namespace, "get", "md", name)
    st = md.get("status") or {}
    return bool(st.get("phase") == "Ready"
                and st.get("observedGeneration") == md["metadata"]["generation"]
                and any(c["type"] == "Ready" and c["status"] == "True"
                        for c in st.get("conditions", [])))


def _wait_ready(kube: Kube, namespace: str, names: list[str], op: Operator,
                timeout: float = 60) -> None:
    for name in names:
        wait_for(lambda n=name: _ready(kube, namespace, n), timeout=timeout,  # type: ignore[misc]
                 what=f"ModelDeployment {namespace}/{name} Ready (operator log {op.log})")


def _release(kube: Kube) -> dict[str, Any]:
    out = helm("list", "-n", OPERATOR_NAMESPACE, "-o", "json", kubeconfig=kube.kubeconfig).stdout
    (release,) = json.loads(out)
    return dict(release)


def _can_i(kube: Kube, verb: str, resource: str, *extra: str) -> bool:
    result = kube.kubectl("auth", "can-i", verb, resource, f"--as={SA}", *extra, check=False)
    return result.stdout.strip() == "yes"


TODAYS_RULES = "kubemaas-operator-todays-rules"


def _todays_cluster_rules() -> list[dict[str, Any]]:
    """The ClusterRole of today's rules file under another name, bound to the chart's
    ServiceAccount."""
    (role,) = [d for d in yaml.safe_load_all(RBAC.read_text())
               if d and d["kind"] == "ClusterRole"]
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": TODAYS_RULES}, "rules": role["rules"]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": TODAYS_RULES},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": TODAYS_RULES},
         "subjects": [{"kind": "ServiceAccount", "name": "kubemaas-operator",
                       "namespace": OPERATOR_NAMESPACE}]},
    ]


EXAMPLE_MODELS = {"cpu-model.yaml": "resnet-cpu", "mig-model.yaml": "bert-mig",
                  "quickstart-model.yaml": "plus-one"}


def test_install_previous_version(testbed: Kube, operator_process: Operator) -> None:
    _namespace(testbed, OPERATOR_NAMESPACE, RESTRICTED)
    started = time.monotonic()
    helm("install", "kubemaas", str(PREVIOUS), "-n", OPERATOR_NAMESPACE, "--wait",
         "--timeout", "120s", kubeconfig=testbed.kubeconfig)
    print(f"helm install 0.0.1 --wait: {time.monotonic() - started:.1f} s")
    assert _release(testbed)["chart"] == "kubemaas-0.0.1"
    wait_established(testbed.kubeconfig, "modeldeployments.serving.kubemaas.io")
    # The operator's own pod passed `restricted` admission: the ReplicaSet made it, it is Ready.
    pods = _json(testbed, "-n", OPERATOR_NAMESPACE, "get", "pods",
                 "-l", "app.kubernetes.io/name=kubemaas-operator")["items"]
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Running"
    # The operator process is today's code, not 0.0.1's: it watches kinds 0.0.1's ClusterRole
    # does not grant (NetworkPolicies, cert-manager Certificates), and kopf stops on a 403 watch.
    # Bind today's cluster rules beside the chart's until the upgrade brings them.
    testbed.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(_todays_cluster_rules()))
    operator_process.start()

    _namespace(testbed, MODELS, RESTRICTED)
    for example in EXAMPLE_MODELS:
        testbed.kubectl("-n", MODELS, "apply", "-f", str(EXAMPLES / example))
    _wait_ready(testbed, MODELS, list(EXAMPLE_MODELS.values()), operator_process)
    table = testbed.kubectl("-n", MODELS, "get", "md").stdout
    print(table)
    assert all(name in table for name in EXAMPLE_MODELS.values())


def test_upgrade_keeps_the_models_ready(testbed: Kube, operator_process: Operator) -> None:
    before = {d["metadata"]["name"]: d["metadata"]["uid"]
              for d in _json(testbed, "-n", MODELS, "get", "deployments")["items"]}
    # Helm never upgrades crds/: apply the chart's CRD first, as NOTES.txt tells users to.
    # --force-conflicts: helm's install is the fields' first manager.
    crds = helm("show", "crds", str(CHART)).stdout
    testbed.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crds)
    live = _json(testbed, "get", "crd", "modeldeployments.serving.kubemaas.io")
    assert live["spec"]["versions"] == yaml.safe_load(crds)["spec"]["versions"]
    result = helm("upgrade", "kubemaas", str(CHART), "-n", OPERATOR_NAMESPACE, "--wait",
                  "--timeout", "120s", "--set", f"runtime.image.repository={PINNED_IMAGE}",
                  kubeconfig=testbed.kubeconfig)
    assert "kubectl get md" in result.stdout  # NOTES.txt says what to do next
    release = _release(testbed)
    assert release["chart"] == "kubemaas-0.1.0" and release["revision"] == "2"
    operator = _json(testbed, "-n", OPERATOR_NAMESPACE, "get", "deployment",
                     "kubemaas-operator")
    assert operator["metadata"]["labels"]["helm.sh/chart"] == "kubemaas-0.1.0"
    testbed.kubectl("-n", OPERATOR_NAMESPACE, "rollout", "status", "--timeout=60s",
                    "deployment/kubemaas-operator")
    assert operator_process.alive()
    testbed.kubectl("delete", "clusterrolebinding,clusterrole", TODAYS_RULES)  # the chart's now
    # Same models, same Deployments (not recreated), still Ready after a resync.
    time.sleep(4)  # KUBEMAAS_OPERATOR_RESYNC_S=3 in the tests: at least one resync
    _wait_ready(testbed, MODELS, list(EXAMPLE_MODELS.values()), operator_process, timeout=30)
    after = {d["metadata"]["name"]: d["metadata"]["uid"]
             for d in _json(testbed, "-n", MODELS, "get", "deployments")["items"]}
    assert after == before

    # New in 0.1.0's values: the pinned template uses the chart's runtime image, read by the
    # operator from the chart's ConfigMap (the one its Role may get).
    testbed.kubectl("-n", MODELS, "apply", "-f", str(EXAMPLES / "pinned-template-model.yaml"))
    _wait_ready(testbed, MODELS, ["plus-one-pinned"], operator_process)
    pod = _json(testbed, "-n", MODELS, "get", "deployment", "plus-one-pinned")["spec"][
        "template"]["spec"]
    assert pod["containers"][0]["image"] == f"{PINNED_IMAGE}:0.1.0"


def test_operator_holds_exactly_the_rules_file(testbed: Kube) -> None:
    """What the ServiceAccount may do is what operator/kubemaas_operator/rbac/operator.yaml
    grants, plus what every authenticated user gets (discovery, self-reviews), and nothing
    else: no Secrets anywhere, no ConfigMaps but the templates one, no pods/exec, no RBAC."""
    assert _can_i(testbed, "patch", "modeldeployments.serving.kubemaas.io",
                  "--subresource=status", "-A")
    assert _can_i(testbed, "patch", "deployments.apps", "-n", MODELS)
    assert _can_i(testbed, "watch", "nodes")
    assert _can_i(testbed, "get", "configmaps/kubemaas-templates", "-n", OPERATOR_NAMESPACE)
    # a ModelCache's download and clean-up pods are the operator's own: creating pods gives it
    # no power that creating Deployments did not already have (pods/exec stays denied)
    assert _can_i(testbed, "create", "pods", "-n", MODELS)
    for denied in (["get", "secrets", "-A"], ["list", "secrets", "-n", OPERATOR_NAMESPACE],
                   ["get", "configmaps", "-n", OPERATOR_NAMESPACE],
                   ["list", "configmaps", "-n", OPERATOR_NAMESPACE],
                   ["create", "pods", "--subresource=exec", "-n", MODELS],
                   ["delete", "modeldeployments.serving.kubemaas.io", "-A"],
                   ["update", "deployments.apps", "-n", MODELS],
                   ["create", "clusterrolebindings"], ["patch", "nodes"],
                   ["create", "customresourcedefinitions.apiextensions.k8s.io"],
                   ["impersonate", "serviceaccounts"], ["*", "*"]):
        assert not _can_i(testbed, *denied), f"the operator may {' '.join(denied)}"

    granted: dict[str, set[str]] = {}
    for doc in yaml.safe_load_all(RBAC.read_text()):
        if doc and doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for res in rule["resources"]:
                        base, _, sub = res.partition("/")  # kubectl: deployments.apps/scale
                        key = (f"{base}.{group}" if group else base) + (f"/{sub}" if sub else "")
                        granted.setdefault(key, set()).update(rule["verbs"])
    listed = testbed.kubectl("auth", "can-i", "--list", f"--as={SA}", "-n",
                             OPERATOR_NAMESPACE).stdout.splitlines()[1:]
    everyone = {"selfsubjectreviews.authentication.k8s.io",
                "selfsubjectaccessreviews.authorization.k8s.io",
                "selfsubjectrulesreviews.authorization.k8s.io"}
    for line in listed:
        fields = line.split()
        if not fields or fields[0].startswith("[") or fields[0] in everyone:
            continue  # non-resource URLs (discovery) and self-reviews: every user has them
        verbs = set(fields[-1].strip("[]").split())
        assert fields[0] in granted, f"the operator holds {line!r}, not in the rules file"
        assert verbs <= granted[fields[0]], f"{line!r} exceeds the rules file"


def test_a_missing_rule_breaks_writing_the_status(testbed: Kube,
                                                  operator_process: Operator) -> None:
    """Remove `patch modeldeployments/status` from the ClusterRole: a new model gets its
    Deployment but never a status (403 in the operator's log); put the rule back and the
    status appears, without restarting the operator."""
    role = _json(testbed, "get", "clusterrole", "kubemaas-operator")
    rules = role["rules"]
    index = next(i for i, r in enumerate(rules) if r["resources"] == ["modeldeployments/status"])
    testbed.kubectl("patch", "clusterrole", "kubemaas-operator", "--type=json",
                    "-p", json.dumps([{"op": "remove", "path": f"/rules/{index}"}]))
    wait_for(lambda: not _can_i(testbed, "patch", "modeldeployments.serving.kubemaas.io",
                  "--subresource=status",
                                "-n", MODELS), timeout=10, what="the rule to be gone")
    try:
        testbed.kubectl("-n", MODELS, "apply", "-f", str(EXAMPLES / "autoscaling-model.yaml"))
        wait_for(lambda: testbed.kubectl("-n", MODELS, "get", "deployment", "ranker",
                                         check=False).returncode == 0,
                 timeout=30, what="the operator to create the Deployment (that rule remains)")
        denied = 'cannot patch resource "modeldeployments/status"'
        wait_for(lambda: any(denied in line and "ranker" in line
                             for line in operator_process.log_text().splitlines()),
                 timeout=30, what=f"the 403 on ranker's status in {operator_process.log}")
        md = _json(testbed, "-n", MODELS, "get", "md", "ranker")
        assert not (md.get("status") or {}).get("phase"), md.get("status")
    finally:
        helm("upgrade", "kubemaas", str(CHART), "-n", OPERATOR_NAMESPACE, "--wait",
             "--reuse-values", kubeconfig=testbed.kubeconfig)  # puts the rule back
    assert _can_i(testbed, "patch", "modeldeployments.serving.kubemaas.io",
                  "--subresource=status", "-n", MODELS)
    _wait_ready(testbed, MODELS, ["ranker"], operator_process)


def test_model_pods_pass_restricted_pod_security(testbed: Kube) -> None:
    """The namespace enforces `restricted` on the real API server (its admission plugin, not a
    check of ours): the ReplicaSets created every model pod, and no FailedCreate."""
    labels = _json(testbed, "get", "namespace", MODELS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # The label is enforced: a pod without the restricted securityContext is refused.
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unrestricted"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    refused = testbed.kubectl("-n", MODELS, "apply", "-f", "-", input=json.dumps(bad),
                              check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr
    pods = _json(testbed, "-n", MODELS, "get", "pods",
                 "-l", "app.kubernetes.io/managed-by=kubemaas")["items"]
    instances = {p["metadata"]["labels"]["app.kubernetes.io/instance"] for p in pods}
    assert set(EXAMPLE_MODELS.values()) | {"ranker"} <= instances
    for namespace in (MODELS, OPERATOR_NAMESPACE):
        events = _json(testbed, "-n", namespace, "get", "events")["items"]
        failed = [e["message"] for e in events if e["reason"] == "FailedCreate"]
        assert not failed, failed


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_runtime_from_the_written_pod_spec_answers(testbed: Kube, tmp_path: Path) -> None:
    """The operator/runtime contract: the container the operator wrote for
    examples/quickstart-model.yaml, started here. Three things are mapped, nothing else: the
    model's HTTPS host becomes a server on 127.0.0.1 that serves this repository (the same
    bytes; the runtime still checks the example's sha256), the container port becomes a free
    local port (other tests may hold 8080), and emptyDir mounts become local directories."""
    deployment = _json(testbed, "-n", MODELS, "get", "deployment", "plus-one")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "kubemaas_runtime"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (port,) = [p for p in container["ports"] if p["name"] == "http"]
    assert int(env["KUBEMAAS_PORT"]) == port["containerPort"]
    example = yaml.safe_load((EXAMPLES / "quickstart-model.yaml").read_text())["spec"]
    assert env["KUBEMAAS_MODEL_URI"] == example["model"]["uri"]
    assert env["KUBEMAAS_MODEL_SHA256"] == example["model"]["sha256"]

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(ROOT)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    local_port = free_port()
    env["KUBEMAAS_MODEL_URI"] = env["KUBEMAAS_MODEL_URI"].replace(
        MODEL_HOST, f"http://127.0.0.1:{server.server_address[1]}/")
    env["KUBEMAAS_PORT"] = str(local_port)
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        assert "emptyDir" in volumes[mount["name"]], f"unexpected volume {mount}"
        local = tmp_path / mount["name"]
        local.mkdir()
        env = {k: v.replace(mount["mountPath"], str(local)) for k, v in env.items()}

    log = tmp_path / "runtime.log"
    command = [sys.executable, *container["command"][1:], *container.get("args", [])]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env})
    try:
        base = f"http://127.0.0.1:{local_port}"
        probes = {name: container[name]["httpGet"]
                  for name in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert all(p["port"] == "http" for p in probes.values())
        wait_for(lambda: proc.poll() is None
                 and http_json(base + probes["readinessProbe"]["path"])[0] == 200,
                 timeout=60, what=f"the readiness probe (runtime log {log})")
        for probe in probes.values():
            assert http_json(base + probe["path"])[0] == 200
        name = example["metadata"]["name"] if "metadata" in example else "plus-one"
        status, body = http_json(f"{base}/v2/models/{name}/infer", {"inputs": [
            {"name": "x", "shape": [2, 4], "datatype": "FP32",
             "data": [1, 2, 3, 4, 0.5, 0, -1, 10]}]})
        assert status == 200, log.read_text()
        assert body["model_name"] == "plus-one"
        assert body["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0, 1.5, 1.0, 0.0, 11.0]
        assert body["outputs"][0]["shape"] == [2, 4]
    finally:
        stop_child(proc)
        server.shutdown()
        server.server_close()


def test_uninstall_keeps_the_crd_and_the_models(testbed: Kube,
                                                operator_process: Operator) -> None:
    operator_process.stop()
    helm("uninstall", "kubemaas", "-n", OPERATOR_NAMESPACE, "--wait",
         kubeconfig=testbed.kubeconfig)
    for kind, name in (("clusterrole", "kubemaas-operator"),
                       ("clusterrolebinding", "kubemaas-operator")):
        assert testbed.kubectl("get", kind, name, check=False).returncode != 0, name
    for kind in ("deployment", "serviceaccount", "configmap/kubemaas-templates"):
        target = kind if "/" in kind else f"{kind}/kubemaas-operator"
        assert testbed.kubectl("-n", OPERATOR_NAMESPACE, "get", target,
                               check=False).returncode != 0, target
    testbed.kubectl("get", "crd", "modeldeployments.serving.kubemaas.io")
    names = {m["metadata"]["name"] for m in _json(testbed, "-n", MODELS, "get", "md")["items"]}
    assert names == set(EXAMPLE_MODELS.values()) | {"ranker", "plus-one-pinned"}
