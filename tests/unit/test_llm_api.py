"""The language-model parts of the API (format hf, spec.model.shape, spec.runtime.engine and
.llm, gpu.count auto): what parse_spec accepts and refuses, with the field named; and the
engines' contracts as rendered (kubemaas_operator.engines, render/llm.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubemaas_operator import engines
from kubemaas_operator.api import SpecError, parse_spec
from kubemaas_operator.render import RenderContext, render
from kubemaas_operator.sizing import GPUType, size_gpus

SHAPE = {"parameters": 8_030_261_248, "numLayers": 32, "hiddenSize": 4096,
         "numAttentionHeads": 32, "numKeyValueHeads": 8, "maxPositionEmbeddings": 8192,
         "dtype": "bfloat16"}
H100 = GPUType("NVIDIA-H100-80GB-HBM3", 81559, 8)


def hf(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"uri": "pvc://store/llama", "format": "hf"},
                            "runtime": {}, "gpu": {"count": "auto"}}
    for key, value in spec.items():
        if value is None:
            body.pop(key, None)
        elif isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    body["model"].setdefault("shape", SHAPE)
    return body


def refused(raw: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    return err.value


def test_engine_defaults_by_format_and_gpus() -> None:
    assert parse_spec(hf()).engine == "vllm"
    cpu = parse_spec(hf(gpu=None, runtime={"image": "img"}))
    assert cpu.engine == "kubemaas"
    mig = parse_spec(hf(gpu={"count": 1, "migProfile": "3g.40gb"}, runtime={"image": "img"}))
    assert mig.engine == "kubemaas"
    tensor = parse_spec({"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
                         "runtime": {"image": "img"}, "gpu": {"count": 2}})
    assert tensor.engine == "kubemaas"


def test_gpu_count_auto_and_its_errors() -> None:
    spec = parse_spec(hf())
    assert spec.gpu is not None and spec.gpu.auto and spec.gpu.count == 1
    assert refused(hf(gpu={"count": "three"})).path == "spec.gpu.count"
    assert refused(hf(gpu={"count": 17})).path == "spec.gpu.count"
    onnx = refused({"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
                    "runtime": {"image": "img"}, "gpu": {"count": "auto"}})
    assert onnx.path == "spec.gpu.count" and "format hf" in onnx.message


@pytest.mark.parametrize(("change", "path", "words"), [
    ({"model": {"uri": "s3://b/m.onnx", "format": "onnx", "shape": None},
      "runtime": {"engine": "vllm"}, "gpu": {"count": 1}}, "spec.runtime.engine", "format hf"),
    ({"runtime": {"engine": "vllm"}, "gpu": None}, "spec.runtime.engine", "whole GPUs"),
    ({"runtime": {"engine": "vllm"}, "gpu": {"count": 1, "migProfile": "1g.10gb"}},
     "spec.runtime.engine", "whole GPUs"),
    ({"model": {"uri": "s3://bucket/llama/"}}, "spec.model.uri", "pvc://"),
    ({"runtime": {"engine": "kubemaas"}}, "spec.runtime.image", "required"),
    ({"runtime": {"engine": "kubemaas", "image": "img"}, "gpu": {"count": 2}},
     "spec.gpu.count", "one GPU"),
    ({"runtime": {"image": "img", "batching": {"maxBatchSize": 8}}}, "spec.runtime.batching",
     "continuously"),
    ({"serving": {"auth": {"secretName": "keys"}}}, "spec.serving.auth", "engine vllm"),
    ({"runtime": {"llm": {"dtype": "int4"}}}, "spec.runtime.llm.dtype", "int4"),
    ({"runtime": {"llm": {"gpuMemoryUtilization": 1.5}}},
     "spec.runtime.llm.gpuMemoryUtilization", "0.05 to 1"),
    ({"runtime": {"llm": {"maxModelLen": 4}}}, "spec.runtime.llm.maxModelLen", "between"),
    ({"runtime": {"llm": {"servedModelName": "has space"}}}, "spec.runtime.llm.servedModelName",
     "valid"),
    ({"model": {"uri": "pvc://store/llama", "format": "hf", "sha256": "0" * 64}},
     "spec.model.sha256", "directory"),
    ({"model": {"uri": "pvc://store/llama", "format": "hf", "shape": {"dtype": "int8"}}},
     "spec.model.shape.dtype", "int8"),
    ({"model": {"uri": "pvc://store/llama", "format": "hf", "shape": {"numLayers": 0}}},
     "spec.model.shape.numLayers", "between"),
])
def test_combinations_no_engine_can_serve_are_refused(change: dict[str, Any], path: str,
                                                       words: str) -> None:
    raw = hf()
    for key, value in change.items():
        if value is None:
            raw.pop(key, None)
        elif isinstance(value, dict) and key in raw and key != "gpu":
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    raw["model"] = {k: v for k, v in raw["model"].items() if v is not None}
    err = refused(raw)
    assert (err.path, words in err.message) == (path, True), str(err)


def test_tensor_formats_refuse_llm_settings_and_shapes() -> None:
    base = {"model": {"uri": "s3://b/m.onnx", "format": "onnx"}, "runtime": {"image": "img"}}
    with_llm = copy.deepcopy(base)
    with_llm["runtime"]["llm"] = {"maxModelLen": 128}
    assert refused(with_llm).path == "spec.runtime.llm"
    with_shape = copy.deepcopy(base)
    with_shape["model"]["shape"] = SHAPE
    assert refused(with_shape).path == "spec.model.shape"


def _deployment(raw: dict[str, Any], **ctx: Any) -> dict[str, Any]:
    spec = size_gpus(parse_spec(raw), (H100,))
    rendered = render(spec, RenderContext(name="llama", namespace="ns", uid="u", **ctx))
    return next(c for c in rendered.children if c["kind"] == "Deployment")


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = dep["spec"]["template"]["spec"]["containers"]
    return containers[0]


def test_vllm_contract_in_the_pod() -> None:
    raw = hf(runtime={"llm": {"maxModelLen": 4096, "dtype": "bfloat16",
                              "gpuMemoryUtilization": 0.85,
                              "extraArgs": ["--enable-prefix-caching"]},
                      "args": ["--seed=1"], "env": [{"name": "VLLM_LOGGING_LEVEL",
                                                     "value": "DEBUG"}]},
             model={"name": "llama-3"})
    dep = _deployment(raw, vllm_image="registry.local/vllm:test")
    c = _container(dep)
    assert c["image"] == "registry.local/vllm:test"
    assert c["command"] == ["vllm", "serve"]
    assert c["args"] == ["/mnt/models/llama", "--served-model-name", "llama-3",
                         "--tensor-parallel-size", "1", "--max-model-len", "4096",
                         "--gpu-memory-utilization", "0.85", "--dtype", "bfloat16",
                         "--port", "8080", "--enable-prefix-caching", "--seed=1"]
    assert {e["name"]: e["value"] for e in c["env"]} == {
        "HOME": "/var/cache/kubemaas/home", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "DEBUG"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 600
    assert c["securityContext"]["runAsUser"] == engines.VLLM_UID
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels[engines.ENGINE_TYPE_LABEL] == "vllm"
    assert labels[engines.ENGINE_LABEL] == "vllm"
    # a runtime.image names the engine's image itself
    mine = hf(runtime={"image": "mine/vllm:1"})
    assert _container(_deployment(mine))["image"] == "mine/vllm:1"


def test_tensor_parallel_size_is_the_gpus_the_sizing_chose() -> None:
    raw = hf(model={"shape": {**SHAPE, "parameters": 70_553_706_496, "numLayers": 80,
                              "hiddenSize": 8192, "numAttentionHeads": 64}})
    c = _container(_deployment(raw))
    i = c["args"].index("--tensor-parallel-size")
    assert c["args"][i + 1] == "4"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "4"


def test_kubemaas_llm_contract_in_the_pod() -> None:
    raw = hf(gpu=None, runtime={"image": "img", "llm": {
        "maxModelLen": 512, "maxNumSeqs": 8, "dtype": "float32", "servedModelName": "tiny",
        "extraArgs": ["--block-size=32"]}, "env": [{"name": "MINE", "value": "1"}]})
    dep = _deployment(raw)
    c = _container(dep)
    assert c["command"] == ["python", "-m", "kubemaas_runtime"]
    assert c["args"] == ["--block-size=32"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["KUBEMAAS_MODEL_FORMAT"] == "hf"
    assert env["KUBEMAAS_MODEL_URI"] == "file:///mnt/models/llama"
    assert env["KUBEMAAS_MODEL_NAME"] == "tiny"
    assert (env["KUBEMAAS_MAX_MODEL_LEN"], env["KUBEMAAS_MAX_NUM_SEQS"],
            env["KUBEMAAS_DTYPE"]) == ("512", "8", "float32")
    assert "KUBEMAAS_GPU_MEMORY_UTILIZATION" not in env  # not set: the runtime's default
    assert [e["name"] for e in c["env"]][-1] == "MINE"  # the user's own last
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "runAsUser" not in c["securityContext"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert (labels[engines.ENGINE_TYPE_LABEL], labels[engines.ENGINE_LABEL]) == (
        "vllm", "kubemaas")


def test_tensor_models_keep_their_contract() -> None:
    raw = {"model": {"uri": "s3://b/m.onnx", "format": "onnx"}, "runtime": {"image": "img"}}
    dep = _deployment(raw)
    c = _container(dep)
    assert c["command"] == ["python", "-m", "kubemaas_runtime"]
    assert c["startupProbe"] == {"httpGet": {"path": "/v2/health/live", "port": "http"},
                                 "periodSeconds": 5, "failureThreshold": 120}
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert engines.ENGINE_TYPE_LABEL not in dep["spec"]["template"]["metadata"]["labels"]


def test_flag_and_env_tables_cover_the_common_settings() -> None:
    for engine in (engines.VLLM, engines.KUBEMAAS_LLM):
        table = engine.flags or engine.env
        assert set(table) <= set(engines.LLM_SETTINGS)
        assert {"max_model_len", "max_num_seqs", "dtype", "gpu_memory_utilization",
                "served_model_name", "port"} <= set(table)
    assert engines.VLLM.flags["tensor_parallel_size"] == "--tensor-parallel-size"


def test_a_template_that_hard_codes_the_runtime_command_is_refused_for_llms() -> None:
    from pathlib import Path

    import yaml

    from kubemaas_operator.render import RenderError, builtin_template

    old = builtin_template("deployment.yaml.j2").replace(
        "command: {{ p.command | tojson }}", 'command: ["python", "-m", "kubemaas_runtime"]')
    ctx = {"template_name": "old", "template_source": old}
    with pytest.raises(RenderError, match=r"must render the engine's command \['vllm', 'serve'\]"):
        _deployment(hf(), **ctx)
    # the same template still serves tensor models, and the example template serves both
    _deployment({"model": {"uri": "s3://b/m.onnx", "format": "onnx"}, "runtime": {"image": "i"}},
                **ctx)
    example = Path(__file__).resolve().parents[2] / "examples" / "templates-configmap.yaml"
    source = yaml.safe_load(example.read_text())["data"]["with-sidecar"]
    c = _container(_deployment(hf(), template_name="with-sidecar", template_source=source))
    assert c["command"] == ["vllm", "serve"] and c["readinessProbe"]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize(("args", "at", "field"), [
    (["--tensor-parallel-size", "4"], 0, "spec.gpu.count"),
    (["-tp", "4"], 0, "spec.gpu.count"),
    (["--pipeline_parallel_size=2"], 0, "spec.gpu.count"),
    (["--enable-prefix-caching", "--port=9000"], 1, "spec.serving.port"),
    (["--served-model-name", "other"], 0, "spec.runtime.llm.servedModelName"),
    (["--max-model-len", "1000000"], 0, "spec.runtime.llm.maxModelLen"),
    (["--data-parallel-size", "2"], 0, "spec.replicas"),
    # argparse's abbreviations set the whole flag in both engines
    (["--enable-prefix-caching", "--tensor-parallel", "4"], 1, "spec.gpu.count"),
    (["--max-model=100000"], 0, "spec.runtime.llm.maxModelLen"),
    (["--served_model", "x"], 0, "spec.runtime.llm.servedModelName"),
])
def test_flags_the_spec_owns_are_refused_in_extra_args(args: list[str], at: int,
                                                       field: str) -> None:
    # appended after the rendered flags they would win: vLLM on 4 GPUs in a pod of 1, a port
    # the Service and the probes do not use
    err = refused(hf(runtime={"llm": {"extraArgs": args}}))
    assert err.path == f"spec.runtime.llm.extraArgs[{at}]", err
    assert field in err.message, err.message


def test_flags_the_spec_owns_are_refused_in_runtime_args_of_a_language_model() -> None:
    err = refused(hf(gpu=None, runtime={"image": "img", "args": ["--log-level=debug",
                                                                  "--port", "9"]}))
    assert (err.path, "spec.serving.port" in err.message) == ("spec.runtime.args[1]", True)
    # other flags, and a tensor model's args, are the user's
    parse_spec(hf(runtime={"llm": {"extraArgs": ["--enable-prefix-caching", "--seed=1",
                                                 "--portal", "-O3", "--max-num-batched-tokens",
                                                 "512", "--", "x"]}}))
    parse_spec({"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
                "runtime": {"image": "img", "args": ["--port", "9"]}})


def test_the_kubemaas_engine_refuses_a_length_over_the_models_positions() -> None:
    """Its runtime refuses to start past them ("--max-model-len 16384 is over the model's
    limit of 8192 positions"): the pod crash-looped where the spec could say so at once."""
    err = refused(hf(gpu=None, runtime={"image": "img", "llm": {"maxModelLen": 16384}}))
    assert err.path == "spec.runtime.llm.maxModelLen" and "8192 positions" in err.message
    parse_spec(hf(gpu=None, runtime={"image": "img", "llm": {"maxModelLen": 8192}}))
    # vLLM serves a rope-scaled model past them, which the shape does not say
    parse_spec(hf(runtime={"llm": {"maxModelLen": 16384}}))
