"""The typed models (kubemaas_operator.api) and the CRD schema (crds/) agree, and the schema
teaches the API."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_operator import api

CRD = Path(__file__).resolve().parents[2] / "crds" / "serving.kubemaas.io_modeldeployments.yaml"


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass inside X, X | None, tuple[X, ...]; None for leaves."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None):
                return _dataclass_of(arg)
    if origin is tuple:
        return _dataclass_of(typing.get_args(tp)[0])
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    return None


def _compare(cls: type, schema: dict[str, Any], path: str, problems: list[str]) -> None:
    if schema.get("type") == "array":
        schema = schema["items"]
    props = schema.get("properties", {})
    hints = typing.get_type_hints(cls)
    fields = {f.metadata["json"]: f for f in dataclasses.fields(cls) if "json" in f.metadata}
    for name in sorted(set(props) - set(fields)):
        problems.append(f"{path}.{name}: in the CRD, not in {cls.__name__}")
    for name in sorted(set(fields) - set(props)):
        problems.append(f"{path}.{name}: in {cls.__name__}, not in the CRD")
    required = set(schema.get("required", []))
    for name, f in fields.items():
        if name not in props:
            continue
        no_default = (f.default is dataclasses.MISSING
                      and f.default_factory is dataclasses.MISSING)
        if name in required and not no_default:
            problems.append(f"{path}.{name}: required in the CRD but has a default in "
                            f"{cls.__name__}")
        if no_default and name not in required:
            problems.append(f"{path}.{name}: optional in the CRD but required in {cls.__name__}")
        sub = _dataclass_of(hints[f.name])
        if sub is not None:
            _compare(sub, props[name], f"{path}.{name}", problems)
        default = props[name].get("default")
        if default is not None and f.default is not dataclasses.MISSING and f.default != default:
            problems.append(f"{path}.{name}: default {default!r} in the CRD, {f.default!r} "
                                f"in {cls.__name__}")


def test_spec_model_matches_crd() -> None:
    problems: list[str] = []
    _compare(api.ModelDeploymentSpec, _schema()["properties"]["spec"], "spec", problems)
    assert not problems, "\n".join(problems)


def test_status_model_matches_crd() -> None:
    problems: list[str] = []
    _compare(api.ModelDeploymentStatus, _schema()["properties"]["status"], "status", problems)
    assert not problems, "\n".join(problems)


def _walk(schema: dict[str, Any], path: str) -> typing.Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_every_field_has_a_description() -> None:
    missing = [path for path, node in _walk(_schema()["properties"]["spec"], "spec")
               if not path.endswith("[]") and not node.get("description")]
    missing += [path for path, node in _walk(_schema()["properties"]["status"], "status")
                if not path.endswith("[]") and not node.get("description")]
    assert not missing, f"fields without a description: {missing}"


def test_crd_shape() -> None:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]
    assert spec["group"] == api.GROUP and spec["names"]["kind"] == api.KIND
    assert spec["names"]["shortNames"] == ["md"] and spec["names"]["categories"] == ["kubemaas"]
    (version,) = spec["versions"]
    assert version["name"] == api.VERSION
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Ready", "Replicas", "GPU", "Reason", "URL", "Age"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == list(api.PHASES)
    assert set(api.FORMATS) == set(
        version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["model"][
            "properties"]["format"]["enum"])


def test_cel_rules_have_messages() -> None:
    rules = []
    for path, node in _walk(_schema(), ""):
        for rule in node.get("x-kubernetes-validations") or []:
            rules.append((path, rule))
    assert len(rules) >= 10
    for path, rule in rules:
        assert rule.get("message"), f"CEL rule at {path} has no message: {rule['rule']}"


GOOD: dict[str, Any] = {"model": {"uri": "s3://bucket/m.onnx", "format": "onnx"},
                        "runtime": {"image": "img:1"}}


def _with(**changes: Any) -> dict[str, Any]:
    import copy

    spec = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        cur = spec
        keys = dotted.split("__")
        for key in keys[:-1]:
            cur = cur.setdefault(key, {})
        cur[keys[-1]] = value
    return spec


def test_parse_good_spec_defaults() -> None:
    spec = api.parse_spec(GOOD)
    assert spec.desired_replicas == 1
    assert spec.gpu is None
    assert spec.serving.port == 8080
    assert spec.runtime.template == "default"


@pytest.mark.parametrize(("spec", "path", "words"), [
    (_with(model__uri="ftp://x/y"), "spec.model.uri", "pvc://"),
    (_with(model__format="pickle"), "spec.model.format", "onnx"),
    (_with(model__sha256="abc"), "spec.model.sha256", "64"),
    (_with(runtime__image=""), "spec.runtime.image", "empty"),
    (_with(runtime__env=[{"name": "KUBEMAAS_PORT", "value": "1"}]), "spec.runtime.env[0].name",
     "rendered"),
    (_with(runtime__resources={"memory": "lots"}), "spec.runtime.resources.memory", "quantity"),
    (_with(gpu={"count": 0}), "spec.gpu.count", "between"),
    (_with(gpu={"migProfile": "huge"}), "spec.gpu.migProfile", "MIG"),
    (_with(gpu={"migProfile": "1g.10gb", "minMemory": "10Gi"}), "spec.gpu.minMemory", "MIG"),
    (_with(replicas=2, autoscaling={"maxReplicas": 3}), "spec.autoscaling", "not both"),
    (_with(autoscaling={"minReplicas": 4, "maxReplicas": 3}, runtime__resources={"cpu": "1"}),
     "spec.autoscaling", "exceeds"),
    (_with(autoscaling={"maxReplicas": 3}), "spec.autoscaling", "CPU request"),
    (_with(model__credentialsSecretRef={"name": "s"}, model__uri="https://h/m.onnx"),
     "spec.model.credentialsSecretRef", "s3"),
    (_with(podMetadata={"labels": {"app.kubernetes.io/name": "x"}}), "spec.podMetadata.labels",
     "reserved"),
    (_with(serving={"protocol": "grpc"}), "spec.serving.protocol", "v2-rest"),
])
def test_parse_rejects_with_a_path_and_a_reason(spec: dict[str, Any], path: str,
                                                 words: str) -> None:
    with pytest.raises(api.SpecError) as info:
        api.parse_spec(spec)
    assert info.value.path == path
    assert words in info.value.message


def test_to_json_round_trip_names() -> None:
    spec = api.parse_spec(_with(gpu={"count": 2, "minMemory": "40Gi"}))
    out = api.to_json(spec)
    assert out["gpu"] == {"count": 2, "products": [], "minMemory": "40Gi"}
    assert spec.gpu is not None and spec.gpu.min_memory_mib == 40960
