"""render/inference.py and spec.serving.inferencePool: a language model's InferencePool and the
HTTPRoute to it (pure)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kubemaas_operator.api import GatewayRef, SpecError, is_llm, parse_spec
from kubemaas_operator.config import Settings, SettingsError
from kubemaas_operator.render import RenderContext, render
from kubemaas_operator.render.inference import (
    endpoint_picker,
    render_inference_pool,
    route_manifests,
    wants_pool,
)

CTX = RenderContext(name="llama", namespace="models", uid="u-1")
GATEWAY = GatewayRef(name="inference", namespace="gateways", hostnames=("llm.example.com",))


def spec(model_format: str = "hf", **serving: Any) -> Any:
    return parse_spec({"model": {"uri": "s3://models/llama", "format": model_format},
                       "runtime": {"image": "img"}, "serving": serving})


def test_only_language_models_get_a_pool_and_only_when_served() -> None:
    assert is_llm("hf") and not is_llm("onnx")
    assert wants_pool(spec(), served=True)
    assert not wants_pool(spec(), served=False)
    assert not wants_pool(spec("onnx"), served=True)


def test_pool_selects_every_runtime_pod_on_the_serving_port() -> None:
    pool = render_inference_pool(spec(port=8000), CTX, None)
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["kind"] == "InferencePool" and pool["metadata"]["name"] == "llama"
    # stable and canary pods alike (the Service's selector, without the track)
    assert pool["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kubemaas-runtime", "app.kubernetes.io/instance": "llama"}
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert "endpointPickerRef" not in pool["spec"]  # no picker named anywhere
    assert pool["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert "serving.kubemaas.io/spec-hash" in pool["metadata"]["annotations"]


def test_the_specs_picker_wins_over_the_operators_default() -> None:
    default = Settings(endpoint_picker="shared-epp:9003:FailOpen").default_endpoint_picker()
    assert default is not None and default.failure_mode == "FailOpen"
    own = spec(inferencePool={"endpointPicker": {"name": "llm-epp", "port": 9002}})
    assert endpoint_picker(own, default) == own.serving.inference_pool.endpoint_picker
    ref = render_inference_pool(own, CTX, endpoint_picker(own, default))["spec"][
        "endpointPickerRef"]
    assert ref == {"group": "", "kind": "Service", "name": "llm-epp",
                   "port": {"number": 9002}, "failureMode": "FailClose"}
    ref = render_inference_pool(spec(), CTX, endpoint_picker(spec(), default))["spec"][
        "endpointPickerRef"]
    assert ref["name"] == "shared-epp" and ref["failureMode"] == "FailOpen"


def test_route_manifests_pick_the_pool_or_the_split() -> None:
    with_pool = route_manifests(spec(), CTX, GATEWAY, True, None, 0)
    assert [m["kind"] for m in with_pool] == ["InferencePool", "HTTPRoute"]
    route = with_pool[1]
    assert route["spec"]["hostnames"] == ["llm.example.com"]
    assert route["spec"]["parentRefs"][0]["namespace"] == "gateways"
    assert route["spec"]["rules"] == [{
        "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
        "backendRefs": [{"group": "inference.networking.k8s.io", "kind": "InferencePool",
                         "name": "llama"}]}]
    assert [m["kind"] for m in route_manifests(spec(), CTX, None, True, None, 0)] == [
        "InferencePool"]
    split = route_manifests(spec("onnx"), CTX, GATEWAY, False, None, 10)
    assert [m["kind"] for m in split] == ["Service", "Service", "HTTPRoute"]
    assert route_manifests(spec("onnx"), CTX, None, False, None, 0) == []


@pytest.mark.parametrize(("picker", "field"), [
    ({"port": 9002}, "spec.serving.inferencePool.endpointPicker.name"),
    ({"name": "Bad_Name", "port": 9002}, "spec.serving.inferencePool.endpointPicker.name"),
    ({"name": "epp"}, "spec.serving.inferencePool.endpointPicker.port"),
    ({"name": "epp", "port": 70000}, "spec.serving.inferencePool.endpointPicker.port"),
    ({"name": "epp", "port": 9002, "failureMode": "Maybe"},
     "spec.serving.inferencePool.endpointPicker.failureMode"),
])
def test_bad_pickers_are_refused_with_the_field(picker: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        spec(inferencePool={"endpointPicker": picker})
    assert err.value.path == field


@pytest.mark.parametrize("value", ["epp", "epp:x", "Epp:9002", "epp:9002:Sometimes"])
def test_a_bad_default_picker_is_a_settings_error(value: str) -> None:
    with pytest.raises(SettingsError, match="KUBEMAAS_OPERATOR_ENDPOINT_PICKER"):
        Settings.from_env({"KUBEMAAS_OPERATOR_ENDPOINT_PICKER": value,
                           "KUBEMAAS_OPERATOR_NAMESPACE": "kubemaas-system"})


def runtime_env(s: Any, ctx: RenderContext) -> dict[str, str]:
    dep = next(c for c in render(s, ctx).children if c["kind"] == "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def test_a_picker_reads_metrics_without_a_key_on_a_model_with_keys() -> None:
    """The picker scrapes /metrics on the serving port and sends no key: with API keys the
    runtime is told to serve GET /metrics there without one (it was 401 to the picker)."""
    served = dataclasses.replace(CTX, inference_pools=True)
    keys = {"auth": {"secretName": "keys"}}
    own = spec(inferencePool={"endpointPicker": {"name": "llm-epp", "port": 9002}}, **keys)
    assert runtime_env(own, served)["KUBEMAAS_METRICS_WITHOUT_KEY"] == "true"
    default = Settings(endpoint_picker="shared-epp:9003").default_endpoint_picker()
    by_default = dataclasses.replace(served, default_endpoint_picker=default)
    assert runtime_env(spec(**keys), by_default)["KUBEMAAS_METRICS_WITHOUT_KEY"] == "true"
    # no picker, no pool (the CRD not served), no keys: /metrics stays as it was
    assert "KUBEMAAS_METRICS_WITHOUT_KEY" not in runtime_env(spec(**keys), served)
    assert "KUBEMAAS_METRICS_WITHOUT_KEY" not in runtime_env(own, CTX)
    no_keys = spec(inferencePool={"endpointPicker": {"name": "llm-epp", "port": 9002}})
    assert "KUBEMAAS_METRICS_WITHOUT_KEY" not in runtime_env(no_keys, served)


def test_the_memoized_render_follows_whether_pools_are_served() -> None:
    """Memory.render's key listed the context's fields by hand and left out inference_pools:
    once the Inference Extension's CRDs came, a model with keys kept the render made before,
    its pods never told to serve /metrics without a key for the picker."""
    from kubemaas_operator.memory import Memory

    raw = {"model": {"uri": "s3://models/llama", "format": "hf"}, "runtime": {"image": "img"},
           "serving": {"auth": {"secretName": "keys"},
                       "inferencePool": {"endpointPicker": {"name": "llm-epp", "port": 9002}}}}
    memory = Memory()

    def without_key(ctx: RenderContext) -> bool:
        _, rendered = memory.render(raw, ctx, "builtin")
        dep = next(c for c in rendered.children if c["kind"] == "Deployment")
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        return any(e["name"] == "KUBEMAAS_METRICS_WITHOUT_KEY" for e in container["env"])

    assert not without_key(CTX)
    assert without_key(dataclasses.replace(CTX, inference_pools=True))


def test_the_pickers_pods_may_reach_the_serving_port() -> None:
    """The NetworkPolicy, closed by default, refused the picker's scrapes of /metrics unless
    its pods were listed in networkPolicy.from by hand: the pods its Service selects (the
    operator reads them, picker_peers.py) are admitted to the serving port."""
    s = spec(port=8000, inferencePool={"endpointPicker": {"name": "llm-epp", "port": 9002}})

    def peers(ctx: RenderContext) -> list[Any]:
        policy = next(c for c in render(s, ctx).children if c["kind"] == "NetworkPolicy")
        rules = policy["spec"].get("ingress") or []
        return [(r["ports"], peer) for r in rules for peer in r["from"]]

    picked = dataclasses.replace(CTX, inference_pools=True, picker_pods={"app": "llm-epp"})
    assert peers(picked) == [([{"port": 8000, "protocol": "TCP"}],
                              {"podSelector": {"matchLabels": {"app": "llm-epp"}}})]
    assert peers(dataclasses.replace(CTX, inference_pools=True)) == []  # closed, as before


def test_the_pickers_pods_are_its_services_selector() -> None:
    import asyncio

    from kubemaas_operator.k8s import ApiError
    from kubemaas_operator.picker_peers import picker_pods
    from kubemaas_operator.writes import Retry

    class Cluster:
        def __init__(self, service: Any = None, error: int = 0) -> None:
            self.service, self.error, self.asked = service, error, []

        async def get_optional(self, api_version: str, kind: str, namespace: str,
                               name: str) -> Any:
            self.asked.append((kind, namespace, name))
            if self.error:
                raise ApiError(self.error, "InternalError", "etcd timeout")
            return self.service

    def pods(cluster: Cluster, s: Any, served: bool = True) -> Any:
        return asyncio.run(picker_pods(cluster, s, "models", served, None))  # type: ignore[arg-type]

    own = spec(inferencePool={"endpointPicker": {"name": "llm-epp", "port": 9002}})
    epp = Cluster({"spec": {"selector": {"app": "llm-epp"}}})
    assert pods(epp, own) == {"app": "llm-epp"}
    assert epp.asked == [("Service", "models", "llm-epp")]
    assert pods(Cluster(None), own) is None  # no such Service (or not readable)
    assert pods(Cluster({"spec": {}}), own) is None  # selects nothing: admits nobody more
    quiet = Cluster({"spec": {"selector": {"app": "x"}}})
    assert pods(quiet, spec()) is None and pods(quiet, own, served=False) is None
    closed = spec(inferencePool={"endpointPicker": {"name": "llm-epp", "port": 9002}},
                  networkPolicy={"enabled": False})
    assert pods(quiet, closed) is None and quiet.asked == []  # no read when nothing needs it
    with pytest.raises(Retry):  # a blip keeps the policy as it is
        pods(Cluster(error=500), own)
