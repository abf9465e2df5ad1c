"""The chart without a cluster: lint, generated copies in step with their sources, the RBAC it
grants equal to the operator's rules file, values the schema refuses, the operator pod's
security context, and the pinned template rendered by the operator's own renderer."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_operator.api import parse_spec
from kubemaas_operator.config import Settings
from kubemaas_operator.render import RenderContext, render

from .helm import CHART, PREVIOUS, RBAC, ROOT, find, helm, objects, render_chart, template


def test_helm_lint_strict() -> None:
    out = helm("lint", "--strict", str(CHART)).stdout
    assert "0 chart(s) failed" in out


def test_generated_copies_match_their_sources() -> None:
    """charts/kubemaas/crds/, templates/rbac.yaml and files/deployment.yaml.j2 come from
    crds/, the operator's rules file and its built-in template (hack/chart-sync)."""
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "chart-sync"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for crd in (ROOT / "crds").glob("*.yaml"):
        assert (CHART / "crds" / crd.name).read_bytes() == crd.read_bytes()


def _without_labels(doc: dict[str, Any]) -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump(doc))
    doc["metadata"].pop("labels", None)
    return doc


@pytest.mark.parametrize("namespace", ["kubemaas-system", "ml-platform"])
def test_rendered_rbac_is_the_rules_file(namespace: str) -> None:
    """Same objects, same rules, same subjects; only the namespace becomes the release's."""
    source = yaml.safe_dump_all(list(yaml.safe_load_all(RBAC.read_text())))
    expected = objects(source.replace("kubemaas-system", namespace))
    rendered = objects(template(namespace=namespace))
    for want in expected:
        got = find(rendered, want["kind"], want["metadata"]["name"])
        assert _without_labels(got) == _without_labels(want), want["kind"]
    kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    assert len([d for d in rendered if d["kind"] in kinds]) == len(expected), \
        "the chart grants RBAC that the rules file does not"


def test_operator_pod_is_restricted_and_probed() -> None:
    docs = objects(template())
    deployment = find(docs, "Deployment", "kubemaas-operator")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == find(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEMAAS_OPERATOR_HEALTH_PORT"] == str(port)


@pytest.mark.parametrize("values", [["--set", "replicaCount=2"], ["--set", "peering.enabled=true"]])
def test_replicas_run_with_peering(values: list[str]) -> None:
    """More than one replica (or peering.enabled): the peering object, the operator's peering
    variables (which parse), POD_NAME for its identity, and a rolling update."""
    docs = objects(template(*values, "--set", "peering.lifetimeSeconds=20"))
    peering = find(docs, "ClusterKopfPeering", "kubemaas")
    assert peering["apiVersion"] == "kopf.dev/v1"
    deployment = find(docs, "Deployment", "kubemaas-operator")
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = Settings.from_env({**env, "KUBEMAAS_OPERATOR_NAMESPACE": "kubemaas-system"})
    assert settings.peering == "kubemaas" and settings.peering_lifetime_s == 20
    pod_name = next(e for e in container["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_one_replica_runs_standalone() -> None:
    docs = objects(template())
    assert not [d for d in docs if d["kind"] == "ClusterKopfPeering"]
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert not [e for e in container["env"] if "PEERING" in e["name"]]


def test_the_peering_crd_is_kopfs() -> None:
    crd = yaml.safe_load((CHART / "crds" / "kopf.dev_clusterkopfpeerings.yaml").read_text())
    assert crd["metadata"]["name"] == "clusterkopfpeerings.kopf.dev"
    assert crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"]["kind"] == "ClusterKopfPeering"


def test_every_operator_variable_is_a_setting() -> None:
    """The chart never sets a KUBEMAAS_OPERATOR_* variable the operator would ignore, and the
    values it sets parse."""
    container = find(objects(template()), "Deployment")["spec"]["template"]["spec"][
        "containers"][0]
    known = {f"KUBEMAAS_OPERATOR_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert set(env) <= known, set(env) - known
    settings = Settings.from_env({**env, "KUBEMAAS_OPERATOR_NAMESPACE": "kubemaas-system"})
    assert settings.health_port == 8081
    # Tuning is left to the operator's defaults unless the values set it.
    assert settings.resync_s == Settings().resync_s
    assert "KUBEMAAS_OPERATOR_RESYNC_S" not in env
    tuned = find(objects(template("--set-json", "operator.resyncSeconds=2.5",
                                  "--set", "operator.apiWorkers=4")), "Deployment")
    env = {e["name"]: e["value"] for e in tuned["spec"]["template"]["spec"]["containers"][0][
        "env"] if "value" in e}
    settings = Settings.from_env({**env, "KUBEMAAS_OPERATOR_NAMESPACE": "kubemaas-system"})
    assert settings.resync_s == 2.5 and settings.api_workers == 4


@pytest.mark.parametrize("values, message", [
    (["--set", "replicaCount=-1"], "minimum"),
    (["--set", "peering.lifetimeSeconds=1"], "lifetimeSeconds"),
    (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "operator.healthPort=0"], "healthPort"),
    (["--set", "operator.metricsPort=8081"], "operator.metricsPort and operator.healthPort"),
    (["--set", "operator.healthPort=9000", "--set", "operator.metricsPort=9000"],
     "operator.metricsPort and operator.healthPort"),
    (["--set", "surprise=1"], "surprise"),
    # (was "at '/runtime/pinnedTemplate/name': 'not' failed")
    (["--set", "runtime.pinnedTemplate.name=default"],
     "runtime.pinnedTemplate.name: the operator's built-in template"),
    (["--set", "operator.httpScaler=scaler.keda:99999"], "/operator/httpScaler"),
    (["--set", "operator.httpInterceptor=proxy.keda:0"], "/operator/httpInterceptor"),
    # image references the kubelet cannot pull (InvalidImageName), which the API server takes
    (["--set", "image.repository=ghcr.io/kubemaas/operator:0.1.0"], "/image/repository"),
    (["--set", "image.repository=ghcr.io/Kubemaas/Operator"], "/image/repository"),
    (["--set-string", "image.tag=v 1"], "/image/tag"),
    (["--set", "runtime.image.repository=ghcr.io/kubemaas/runtime@sha256:" + "a" * 64],
     "/runtime/image/repository"),
    (["--set-string", "runtime.image.tag=@sha256:" + "a" * 64], "/runtime/image/tag"),
    (["--set-string", "operator.vllmImage=vllm/vllm-openai: v1"], "/operator/vllmImage"),
    # the operator refuses these too (it would resync every model a thousand times a second)
    (["--set-json", "operator.resyncSeconds=0.001"], "/operator/resyncSeconds"),
    (["--set-json", "operator.gatewayDiscoverySeconds=0.5"], "/operator/gatewayDiscoverySeconds"),
])
def test_schema_refuses(values: list[str], message: str) -> None:
    result = render_chart(*values, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_pinned_template_renders_with_the_chart_image() -> None:
    """The pinned template is the operator's built-in one with the chart's runtime image; the
    operator's own renderer accepts it and the image of the spec no longer matters."""
    docs = objects(template("--set", "runtime.image.repository=registry.local/kubemaas-runtime",
                            "--set", "runtime.image.tag=9.9.9"))
    source = find(docs, "ConfigMap", "kubemaas-templates")["data"]["pinned"]
    md = yaml.safe_load((ROOT / "examples" / "cpu-model.yaml").read_text())
    md["spec"]["runtime"]["template"] = "pinned"
    spec = parse_spec(md["spec"])
    ctx = RenderContext(name="m", namespace="n", uid="u", template_name="pinned",
                        template_source=source)
    deployment = render(spec, ctx).children[0]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.local/kubemaas-runtime:9.9.9"
    # Exactly the built-in template's Deployment for a spec that names the chart's image.
    md["spec"]["runtime"]["image"] = "registry.local/kubemaas-runtime:9.9.9"
    md["spec"]["runtime"]["template"] = "default"
    builtin = render(parse_spec(md["spec"]), RenderContext(name="m", namespace="n", uid="u"))
    assert deployment["spec"] == builtin.children[0]["spec"]


def test_admin_templates_and_service_monitor(tmp_path: Path) -> None:
    sidecar = yaml.safe_load((ROOT / "examples" / "templates-configmap.yaml").read_text())
    source = tmp_path / "with-sidecar.j2"
    source.write_text(sidecar["data"]["with-sidecar"])
    docs = objects(template("--set-file", f"templates.with-sidecar={source}",
                            "--set", "serviceMonitor.enabled=true",
                            "--set", "runtime.pinnedTemplate.enabled=false"))
    data = find(docs, "ConfigMap", "kubemaas-templates")["data"]
    assert set(data) == {"with-sidecar"}
    assert data["with-sidecar"] == sidecar["data"]["with-sidecar"]
    monitor = find(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == \
        "kubemaas-runtime"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    none = objects(template("--set", "runtime.pinnedTemplate.enabled=false"))
    assert not [d for d in none if d["kind"] in ("ConfigMap", "ServiceMonitor")]


def test_chart_version_and_previous_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == "0.1.0"
    assert PREVIOUS.exists(), "run hack/chart-previous"
    shown = yaml.safe_load(helm("show", "chart", str(PREVIOUS)).stdout)
    assert shown["version"] == "0.0.1"


def test_a_cluster_older_than_the_crds_need_is_refused_by_name() -> None:
    """isQuantity in the CRDs' rules: a 1.28 API server refuses the CRD with a CEL compile
    error; helm says the version instead, before anything is applied."""
    crds = "".join(p.read_text() for p in sorted((ROOT / "crds").glob("*.yaml")))
    assert "isQuantity(" in crds  # the reason for the minimum; drop it with the last use
    old = helm("template", "kubemaas", str(CHART), "--kube-version", "1.28.9", check=False)
    assert old.returncode != 0 and "requires kubeVersion: >=1.29.0-0" in old.stderr
    for version in ("1.29.0", "v1.30.2-gke.1"):  # a provider's pre-release suffix counts too
        assert objects(helm("template", "kubemaas", str(CHART), "--kube-version",
                            version).stdout)


@pytest.mark.parametrize("extra, message", [
    ({"name": "KUBEMAAS_OPERATOR_LOG_LEVEL", "value": "DEBUG"}, "operator.logLevel"),
    ({"name": "KUBEMAAS_OPERATOR_RESYNC_S", "value": "5"}, "operator.resyncSeconds"),
    ({"name": "KUBEMAAS_OPERATOR_NAMESPACE", "value": "x"}, "the release's namespace"),
    ({"name": "KUBEMAAS_OPERATOR_METRICS_PORT", "value": "0"}, "operator.metricsPort"),
    # the only ConfigMap the chart's Role lets the operator read is kubemaas-templates
    ({"name": "KUBEMAAS_OPERATOR_TEMPLATES_CONFIGMAP", "value": "mine"}, "kubemaas-templates"),
])
def test_extra_env_cannot_shadow_what_the_chart_sets(extra: dict[str, str],
                                                     message: str) -> None:
    """A second definition of a variable the chart sets works on install (the last one wins in
    the container) but `helm upgrade`'s strategic merge keys env by name and silently keeps only
    the chart's: refused, naming the value to set instead."""
    result = render_chart("--set-json", f"operator.extraEnv=[{json.dumps(extra)}]", check=False)
    assert result.returncode != 0, "rendered a second " + extra["name"]
    assert extra["name"] in result.stderr and message in result.stderr, result.stderr


def test_extra_env_names_are_unique_and_values_strings() -> None:
    twice = [{"name": "FOO", "value": "1"}, {"name": "FOO", "value": "2"}]
    result = render_chart("--set-json", f"operator.extraEnv={json.dumps(twice)}", check=False)
    assert result.returncode != 0 and "FOO" in result.stderr, result.stderr
    for bad in ({"name": "FOO", "value": 3}, {"name": "FOO", "valu": "3"}):
        result = render_chart("--set-json", f"operator.extraEnv=[{json.dumps(bad)}]", check=False)
        assert result.returncode != 0 and "extraEnv" in result.stderr, result.stderr
    fine = [{"name": "FOO", "value": "1"},
            {"name": "BAR", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    container = find(objects(template("--set-json", f"operator.extraEnv={json.dumps(fine)}")),
                     "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["env"][-2:] == fine


@pytest.mark.parametrize("key, label", [
    ("commonLabels", "app.kubernetes.io/name"),
    ("commonLabels", "app.kubernetes.io/managed-by"),
    ("serviceMonitor.labels", "app.kubernetes.io/instance"),
    ("podLabels", "app.kubernetes.io/instance"),
    ("podAnnotations", "checksum/templates"),
])
def test_labels_from_values_cannot_replace_the_charts(key: str, label: str) -> None:
    """commonLabels app.kubernetes.io/name=x rendered the key twice in every object's labels;
    kubectl and helm kept the last, so the metrics Service lost the label its ServiceMonitor
    selects, and a podLabels selector key broke the Deployment's selector."""
    result = render_chart("--set-json", f"{key}={json.dumps({label: 'x'})}", check=False)
    assert result.returncode != 0, f"{key} replaced {label}"
    assert f"{key}: {label} is set by the chart" in result.stderr, result.stderr
    docs = objects(template("--set", "commonLabels.team=ml", "--set", "podLabels.team=ml",
                            "--set", "podAnnotations.owner=ml"))
    pod = find(docs, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "ml" and pod["metadata"]["annotations"]["owner"]
    assert find(docs, "Service")["metadata"]["labels"]["team"] == "ml"


def test_every_granted_api_group_is_one_the_operator_calls() -> None:
    """Least privilege: the ClusterRole grants nothing in an API group the operator never
    addresses. Its groups: the kinds it renders and watches (indexes.CHILDREN), its own API, the
    core group (pods, nodes, namespaces, claims, Events) and kopf's own (the peering objects, and
    CRDs it watches to see its resources appear). events.k8s.io was granted, though the operator
    posts its Events through the core API and kopf's posting is off."""
    from kubemaas_operator.api import GROUP
    from kubemaas_operator.indexes import CHILDREN
    from kubemaas_operator.k8s import _path

    assert _path("v1", "Event", "ns").startswith("/api/v1/")
    called = {group for group, _version, _plural in CHILDREN.values()} | {
        "", GROUP, "kopf.dev", "apiextensions.k8s.io"}
    granted = {group for doc in yaml.safe_load_all(RBAC.read_text())
               if doc and doc["kind"] == "ClusterRole"
               for rule in doc["rules"] for group in rule["apiGroups"]}
    assert granted <= called, f"granted but never called: {granted - called}"


def test_image_references_that_pull() -> None:
    digest = "sha256:" + "a" * 64
    docs = objects(template("--set", "image.repository=registry.local:5000/team/kubemaas-operator",
                            "--set", f"image.tag=0.1.0@{digest}",
                            "--set", "runtime.image.repository=kubemaas/runtime",
                            "--set", "runtime.image.tag=0.1.0_gpu-2"))
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"registry.local:5000/team/kubemaas-operator:0.1.0@{digest}"
    pinned = find(docs, "ConfigMap", "kubemaas-templates")["data"]["pinned"]
    assert 'image: "kubemaas/runtime:0.1.0_gpu-2"' in pinned


def test_large_numbers_reach_the_operator_as_numbers_it_parses(tmp_path: Path) -> None:
    """Numbers in a values file reach templates as floats, which helm printed with an exponent
    from a million on: apiWorkers 1000000 became KUBEMAAS_OPERATOR_API_WORKERS="1e+06", which
    the operator refuses (int), so it exited at start."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "replicaCount": 2,
        "peering": {"enabled": True, "name": "kubemaas", "lifetimeSeconds": 1000000},
        "operator": {"apiWorkers": 1000000, "maxConcurrentReconciles": 12345678,
                     "resyncSeconds": 1000000, "notReadyGraceSeconds": 2.5,
                     "healthPort": 8081, "metricsPort": 9090}}))
    container = find(objects(template("-f", str(values))), "Deployment")["spec"]["template"][
        "spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["KUBEMAAS_OPERATOR_API_WORKERS"] == "1000000"
    settings = Settings.from_env({**env, "KUBEMAAS_OPERATOR_NAMESPACE": "kubemaas-system"})
    assert (settings.api_workers, settings.max_concurrent_reconciles) == (1000000, 12345678)
    assert (settings.peering_lifetime_s, settings.resync_s) == (1000000, 1e6)
    assert (settings.not_ready_grace_s, settings.metrics_port) == (2.5, 9090)


def test_one_priority_for_every_replica_is_refused() -> None:
    """KUBEMAAS_OPERATOR_PRIORITY in extraEnv gives every replica the same priority, and kopf
    pauses all operators that share one: with replicas, nothing would reconcile."""
    extra = 'operator.extraEnv=[{"name": "KUBEMAAS_OPERATOR_PRIORITY", "value": "100"}]'
    result = render_chart("--set", "replicaCount=2", "--set-json", extra,
                          check=False)
    assert result.returncode != 0, "every replica got priority 100"
    assert "KUBEMAAS_OPERATOR_PRIORITY" in result.stderr and "pause" in result.stderr
    container = find(objects(template("--set", "peering.enabled=true", "--set-json", extra)),
                     "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "KUBEMAAS_OPERATOR_PRIORITY", "value": "100"} in container["env"]


@pytest.mark.parametrize("name, message", [
    ("default", "templates.default: the operator's built-in template"),
    ("Bad_Name", "templates.Bad_Name: not a template name"),
    ("a" * 64, "not a template name"),
])
def test_template_names_are_refused_with_their_name(name: str, message: str) -> None:
    """values.schema.json checked the names with propertyNames, and helm's validator reported
    the refusal at another value, a different one each time ("at '/replicaCount': invalid
    propertyName 'default'")."""
    result = render_chart("--set", f"templates.{name}=kind: Deployment",
                          check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "invalid propertyName" not in result.stderr, result.stderr


def test_scrape_timeout_longer_than_the_interval_is_refused() -> None:
    """interval 5s with the default scrapeTimeout 10s rendered, and the Prometheus Operator
    rejects such a ServiceMonitor ("scrapeTimeout greater than scrapeInterval"): no model was
    scraped and nothing said so at install."""
    result = render_chart("--set", "serviceMonitor.enabled=true",
                          "--set", "serviceMonitor.interval=5s", check=False)
    assert result.returncode != 0, "rendered a ServiceMonitor Prometheus rejects"
    assert "serviceMonitor.scrapeTimeout 10s is longer than serviceMonitor.interval 5s" in \
        result.stderr, result.stderr
    for interval, timeout in (("10s", "10s"), ("1m", "59s"), ("1h", "30m"), ("2s", "1500ms")):
        monitor = find(objects(template("--set", "serviceMonitor.enabled=true",
                                        "--set", f"serviceMonitor.interval={interval}",
                                        "--set", f"serviceMonitor.scrapeTimeout={timeout}")),
                       "ServiceMonitor", "kubemaas-runtime")
        assert monitor["spec"]["endpoints"][0]["scrapeTimeout"] == timeout
    result = render_chart("--set", "serviceMonitor.enabled=true",
                          "--set", "serviceMonitor.interval=1s", "--set",
                          "serviceMonitor.scrapeTimeout=1001ms", check=False)
    assert result.returncode != 0


@pytest.mark.parametrize("key", [
    "image", "peering", "operator", "runtime", "serviceMonitor", "templates", "runtime.image",
    "runtime.pinnedTemplate", "runtime.pinnedTemplate.name", "operator.logLevel",
    "operator.healthPort", "operator.metricsPort", "serviceMonitor.interval"])
def test_a_value_set_to_null_is_named(key: str) -> None:
    """`--set KEY=null` (or `KEY: ~` in a values file) removes the chart's default. Some ended in
    a template's nil pointer ("executing ... at <.Values.image.tag>: nil pointer evaluating
    interface {}.tag"), some rendered what cannot run: operator.metricsPort null became
    KUBEMAAS_OPERATOR_METRICS_PORT="null" and operator.logLevel null an empty level, and the
    operator exited at start. The schema now names the missing value."""
    result = render_chart("--set-json", f"{key}=null", check=False)
    assert result.returncode != 0, f"{key}=null rendered"
    parent, _, leaf = key.rpartition(".")
    assert f"missing property '{leaf}'" in result.stderr, result.stderr
    where = "/" + parent.replace(".", "/") if parent else ""
    assert f"at '{where}': missing property '{leaf}'" in result.stderr, result.stderr
