"""Golden files of rendered manifests: every example in examples/ rendered to
tests/golden/data/<example>.yaml (and the HTTPRoute split to data/gateway/). After an intended
change, regenerate them with

    KUBEMAAS_UPDATE_GOLDEN=1 .venv/bin/pytest tests/golden

(refused when CI is set; the run ends with the list of files it changed) and review the diff.
A golden file that no case produces fails test_no_stale_golden_files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.goldens import check, stale

from kubemaas_operator.api import parse_model, parse_spec
from kubemaas_operator.modelcache import implicit
from kubemaas_operator.render import RenderContext, RenderError, render
from kubemaas_operator.scheduling import NodeInfo
from kubemaas_operator.sizing import GPUType, gpu_types, size_gpus
from kubemaas_testbed.topology import load, node_manifests

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml")
                  if yaml.safe_load(p.read_text()).get("kind") == "ModelDeployment")
DATA = Path(__file__).parent / "data"
HTTPROUTE_GOLDEN = DATA / "gateway" / "h100-model-httproute.yaml"
INFERENCEPOOL_GOLDEN = DATA / "gateway" / "llm-inferencepool.yaml"
# The KEDA ScaledObject: the queue-scaled example where the API server serves KEDA.
SCALEDOBJECT_GOLDEN = DATA / "keda" / "queue-autoscaling-model-scaledobject.yaml"
# Waking on the first request: the same example at minReplicas 0 where the API server also serves
# KEDA's HTTP add-on (its InterceptorRoute, and the external-push trigger on the ScaledObject).
WAKE_GOLDEN = DATA / "keda" / "queue-autoscaling-model-at-zero-interceptorroute.yaml"


def _testbed_gpu_types() -> tuple[GPUType, ...]:
    """The GPU node types of the testbed's default topology, as the operator's node index sees
    them (gpu.count auto chooses among them)."""
    nodes = [NodeInfo(name=n["metadata"]["name"], labels=n["metadata"].get("labels") or {},
                      allocatable={k: int(v) for k, v in n["status"]["allocatable"].items()
                                   if k.startswith("nvidia.com/")})
             for n in node_manifests(load("default"))]
    return gpu_types(nodes)


def _render(example: Path, template: str | None = None, kinds: tuple[str, ...] = (),
            **ctx_extra: Any) -> str:
    md = yaml.safe_load(example.read_text())
    if "autoCache" in md["spec"]["model"]:  # rendered as the operator does: on the cache it names
        model = parse_model(md["spec"]["model"])
        name = implicit.cache_name(model.uri, implicit.model_key(model))
        md["spec"] = implicit.effective_spec(md["spec"], name)
    spec = size_gpus(parse_spec(md["spec"]), _testbed_gpu_types())
    ctx = RenderContext(name=md["metadata"]["name"], namespace="models",
                        uid="00000000-0000-0000-0000-000000000001",
                        template_name=spec.runtime.template, template_source=template,
                        **ctx_extra)
    return yaml.safe_dump_all([c for c in render(spec, ctx).children
                               if not kinds or c["kind"] in kinds], sort_keys=True)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_golden(example: Path) -> None:
    check(DATA / f"{example.stem}.yaml", _render(example), f"the rendering of {example.name}")


def test_golden_scaledobject() -> None:
    check(SCALEDOBJECT_GOLDEN, _render(ROOT / "examples" / "queue-autoscaling-model.yaml",
                                       kinds=("ScaledObject", "HorizontalPodAutoscaler"),
                                       keda=True, prometheus="http://prometheus.monitoring:9090"),
          "the KEDA ScaledObject of queue-autoscaling-model.yaml")


def test_golden_wake_on_request() -> None:
    md = yaml.safe_load((ROOT / "examples" / "queue-autoscaling-model.yaml").read_text())
    md["spec"]["autoscaling"].update(minReplicas=0, idleSeconds=300)
    ctx = RenderContext(name=md["metadata"]["name"], namespace="models",
                        uid="00000000-0000-0000-0000-000000000001", keda=True,
                        prometheus="http://prometheus.monitoring:9090", http_addon=True,
                        http_scaler="keda-add-ons-http-external-scaler.keda:9090",
                        http_interceptor="keda-add-ons-http-interceptor-proxy.keda:8080")
    children = [c for c in render(parse_spec(md["spec"]), ctx).children
                if c["kind"] in ("InterceptorRoute", "ScaledObject")]
    check(WAKE_GOLDEN, yaml.safe_dump_all(children, sort_keys=True),
          "the InterceptorRoute and ScaledObject of queue-autoscaling-model.yaml at minReplicas 0")


def test_no_stale_golden_files() -> None:
    """Every golden file belongs to a case above (a removed example takes its file along)."""
    extra = stale(DATA, [*(DATA / f"{e.stem}.yaml" for e in EXAMPLES), HTTPROUTE_GOLDEN,
                         INFERENCEPOOL_GOLDEN, SCALEDOBJECT_GOLDEN, WAKE_GOLDEN])
    assert not extra, (f"golden files that no case produces: {[str(p) for p in extra]}; "
                       "KUBEMAAS_UPDATE_GOLDEN=1 removes them")


def test_examples_exist() -> None:
    assert {p.stem for p in EXAMPLES} >= {"cpu-model", "h100-model", "multi-gpu-model",
                                          "mig-model", "autoscaling-model"}


def test_render_is_deterministic_and_hash_tracks_content() -> None:
    example = ROOT / "examples" / "h100-model.yaml"
    assert _render(example) == _render(example)
    md = yaml.safe_load(example.read_text())
    ctx = RenderContext(name="m", namespace="n", uid="u")
    a = render(parse_spec(md["spec"]), ctx)
    md["spec"]["runtime"]["image"] = "ghcr.io/kubemaas/runtime:0.2.0"
    b = render(parse_spec(md["spec"]), ctx)
    hashes = [[c["metadata"]["annotations"]["serving.kubemaas.io/spec-hash"]
               for c in r.children] for r in (a, b)]
    assert hashes[0][0] != hashes[1][0]  # the Deployment changed
    assert hashes[0][1] == hashes[1][1]  # the Service did not
    assert a.revision != b.revision


ADMIN_TEMPLATE = (ROOT / "examples" / "templates-configmap.yaml")


def test_admin_template_renders_and_keeps_identity() -> None:
    cm = yaml.safe_load(ADMIN_TEMPLATE.read_text())
    source = cm["data"]["with-sidecar"]
    example = ROOT / "examples" / "cpu-model.yaml"
    children = yaml.safe_load_all(_render(example, template=source))
    dep = next(iter(children))
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["runtime", "log-shipper"]
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "resnet-cpu"


@pytest.mark.parametrize(("source", "words"), [
    ("{{ p.no_such_field }}", "UndefinedError"),
    ("apiVersion: v1\nkind: ConfigMap\n", "must render an apps/v1 Deployment"),
    ("kind: [", "YAML"),
    ("apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    metadata: {labels: {}}\n"
     "    spec: {containers: [{name: x}]}\n", "must keep the pod labels"),
])
def test_broken_admin_template_is_a_render_error(source: str, words: str) -> None:
    md = yaml.safe_load((ROOT / "examples" / "cpu-model.yaml").read_text())
    with pytest.raises(RenderError, match=words):
        render(parse_spec(md["spec"]), RenderContext(name="m", namespace="n", uid="u",
                                                     template_name="x", template_source=source))


def test_golden_httproute_split() -> None:
    """The HTTPRoute split's children (NAME-stable, NAME-canary, the HTTPRoute) of the H100
    example attached to a Gateway, at a canary weight of 10."""
    from kubemaas_operator.render import render_gateway

    md = yaml.safe_load((ROOT / "examples" / "h100-model.yaml").read_text())
    md["spec"]["serving"] = {**md["spec"].get("serving", {}),
                             "gateway": {"name": "inference", "namespace": "gateways"}}
    spec = parse_spec(md["spec"])
    assert spec.serving.gateway is not None
    ctx = RenderContext(name=md["metadata"]["name"], namespace="models",
                        uid="00000000-0000-0000-0000-000000000001")
    text = yaml.safe_dump_all(render_gateway(spec, ctx, spec.serving.gateway, 10),
                              sort_keys=True)
    check(HTTPROUTE_GOLDEN, text, "the HTTPRoute split rendering")


def test_golden_inference_pool() -> None:
    """A language model's routing children when InferencePool is served: the InferencePool
    (with the spec's endpoint picker) and the HTTPRoute sending /v1 to it."""
    from kubemaas_operator.render.inference import route_manifests

    spec = parse_spec({"model": {"uri": "s3://models/llama-3-8b", "format": "hf"},
                       "runtime": {"image": "ghcr.io/kubemaas/runtime:0.1.0"},
                       "serving": {"port": 8000,
                                   "gateway": {"name": "inference", "namespace": "gateways"},
                                   "inferencePool": {"endpointPicker": {
                                       "name": "llm-epp", "port": 9002}}}})
    assert spec.serving.gateway is not None
    ctx = RenderContext(name="llama", namespace="models",
                        uid="00000000-0000-0000-0000-000000000001")
    text = yaml.safe_dump_all(route_manifests(spec, ctx, spec.serving.gateway, True, None, 0),
                              sort_keys=True)
    check(INFERENCEPOOL_GOLDEN, text, "the InferencePool rendering")
