"""Formats keras and tf-savedmodel: the runtime's pure reading of Keras configurations, and the
operator's parsing and rendering (the tfconvert init container)."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from kubemaas_operator.api import DEFAULT_CONVERTER_IMAGE, SpecError, parse_spec
from kubemaas_operator.render import RenderContext, RenderError, builtin_template, render
from kubemaas_runtime.backends.keras_config import (
    KerasConfigError,
    drop_legacy_arguments,
    find_refusals,
    read_config,
)

BUILTIN = {"Dense", "LSTM", "Bidirectional", "TimeDistributed", "InputLayer", "Embedding",
           "Lambda"}


def layer(cls: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"module": "keras.layers", "class_name": cls, "registered_name": None,
            "config": {"name": name, **extra}}


def model(*layers: dict[str, Any]) -> dict[str, Any]:
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": "m", "layers": list(layers)}}


def test_builtin_layers_are_servable_nested_ones_too() -> None:
    cfg = model(layer("InputLayer", "in"), layer("Embedding", "emb"),
                layer("Bidirectional", "bi", layer=layer("LSTM", "lstm")),
                model(layer("Dense", "inner")))
    assert find_refusals(cfg, BUILTIN) == []


def test_custom_and_lambda_layers_are_named() -> None:
    custom = {"module": None, "class_name": "Scale", "registered_name": "demo>Scale",
              "config": {"name": "scale"}}
    wrapped = layer("TimeDistributed", "td", layer={
        "module": "my_pkg.layers", "class_name": "Dense", "registered_name": None,
        "config": {"name": "fake_dense"}})
    found = find_refusals(model(layer("Dense", "d"), custom, layer("Lambda", "plus_one"),
                                wrapped), BUILTIN)
    assert [(r.layer, r.class_name) for r in found] == [
        ("scale", "demo>Scale"), ("plus_one", "Lambda"), ("fake_dense", "Dense")]
    assert found[0].message().startswith("cannot serve layer 'scale' (class demo>Scale): not a "
                                         "built-in Keras layer")
    assert "bytecode" in found[1].message() and "my_pkg.layers" in found[2].message()
    assert all("\n" not in r.message() for r in found)


def test_keras2_configurations_without_module_are_checked_by_class() -> None:
    k2 = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "Dense", "config": {"name": "d"}},
        {"class_name": "AttentionThing", "config": {"name": "att"}}]}}
    assert [r.layer for r in find_refusals(k2, BUILTIN)] == ["att"]


def test_legacy_time_major_is_dropped_only_at_its_default() -> None:
    cfg = model(layer("LSTM", "lstm", time_major=False, units=4), layer("Dense", "d"))
    assert drop_legacy_arguments(cfg) == ["lstm.time_major"]
    assert cfg["config"]["layers"][0]["config"] == {"name": "lstm", "units": 4}
    with pytest.raises(KerasConfigError, match=r"'gru'.*time_major=True"):
        drop_legacy_arguments(model(layer("GRU", "gru", time_major=True)))


def test_read_config_from_keras_archive_and_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "m.keras"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("config.json", json.dumps(model(layer("Dense", "d"))))
    assert read_config(good)["class_name"] == "Sequential"
    empty = tmp_path / "e.keras"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(KerasConfigError, match=r"without config.json"):
        read_config(empty)
    junk = tmp_path / "j.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(KerasConfigError, match=r"neither a .keras archive nor an HDF5"):
        read_config(junk)


def spec(fmt: str, **runtime: Any) -> dict[str, Any]:
    return {"model": {"uri": "pvc://store/models/text/1", "format": fmt, "sha256": "a" * 64},
            "runtime": {"image": "runtime:1", "resources": {"cpu": "1", "memory": "1Gi"},
                        "env": [{"name": "AWS_ENDPOINT_URL", "value": "http://s3.local"}],
                        **runtime},
            "replicas": 1}


def pod_of(raw: dict[str, Any], template: str | None = None) -> dict[str, Any]:
    ctx = RenderContext(name="text", namespace="ns", uid="u", template_source=template)
    pod: dict[str, Any] = render(parse_spec(raw), ctx).children[0]["spec"]["template"]["spec"]
    return pod


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_keras_is_served_by_the_runtime_itself() -> None:
    pod = pod_of(spec("keras"))
    assert "initContainers" not in pod
    env = env_of(pod["containers"][0])
    assert env["KUBEMAAS_MODEL_FORMAT"] == "keras"
    assert env["KUBEMAAS_MODEL_URI"] == "file:///mnt/models/models/text/1"
    assert env["KUBEMAAS_MODEL_SHA256"] == "a" * 64


def test_savedmodel_is_converted_by_an_init_container() -> None:
    pod = pod_of(spec("tf-savedmodel"))
    (init,) = pod["initContainers"]
    (runtime,) = pod["containers"]
    assert init["name"] == "tfconvert" and init["image"] == DEFAULT_CONVERTER_IMAGE
    assert init["command"] == ["python", "-m", "kubemaas_runtime.tfconvert"]
    assert env_of(init) == {"KUBEMAAS_MODEL_URI": "file:///mnt/models/models/text/1",
                            "KUBEMAAS_CONVERT_DIR": "/var/cache/kubemaas/converted",
                            "KUBEMAAS_MODEL_SHA256": "a" * 64,
                            "AWS_ENDPOINT_URL": "http://s3.local"}
    assert init["volumeMounts"] == runtime["volumeMounts"]
    assert init["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"},
                                 "limits": {"memory": "1Gi"}}
    assert init["securityContext"] == runtime["securityContext"]
    env = env_of(runtime)
    assert env["KUBEMAAS_MODEL_URI"] == "file:///var/cache/kubemaas/converted/model.onnx"
    assert env["KUBEMAAS_MODEL_FORMAT"] == "onnx"
    assert "KUBEMAAS_MODEL_SHA256" not in env  # the converter checked the SavedModel's


def test_a_named_signature_reaches_the_converter_and_the_v1_route() -> None:
    """A SavedModel saved without serving_default (signatures predict, classify) could not be
    served: spec.model.signature names the one to convert, and the runtime's v1 route takes
    that signature_name."""
    raw = spec("tf-savedmodel")
    raw["model"]["signature"] = "predict"
    pod = pod_of(raw)
    (init,) = pod["initContainers"]
    assert env_of(init)["KUBEMAAS_SIGNATURE"] == "predict"
    assert env_of(pod["containers"][0])["KUBEMAAS_SIGNATURE_NAME"] == "predict"
    assert "KUBEMAAS_SIGNATURE_NAME" not in env_of(pod_of(spec("tf-savedmodel"))["containers"][0])
    for fmt, name, words in (("onnx", "predict", "needs format tf-savedmodel"),
                             ("tf-savedmodel", "../x", "not a valid signature name")):
        raw = spec(fmt)
        raw["model"]["signature"] = name
        with pytest.raises(SpecError, match=rf"spec.model.signature.*{re.escape(words)}"):
            parse_spec(raw)


def test_converter_image_and_gpu_stay_out_of_the_converter() -> None:
    raw = spec("tf-savedmodel", converterImage="registry.local/tfconvert:2")
    raw["gpu"] = {"count": 1}
    pod = pod_of(raw)
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.local/tfconvert:2"
    assert not any("nvidia" in k for part in init["resources"].values() for k in part)
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_a_template_without_init_containers_is_refused_for_savedmodels() -> None:
    source = builtin_template("deployment.yaml.j2").replace("p.init_containers", "[]")
    assert "initContainers" not in pod_of(spec("keras"), source)
    with pytest.raises(RenderError, match=r"must render p.init_containers"):
        pod_of(spec("tf-savedmodel"), source)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(SpecError, match=r"spec.model.format.*tf-savedmodel"):
        parse_spec(spec("tensorflow"))


def test_the_example_admin_template_renders_the_converter() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    cm = yaml.safe_load((root / "examples" / "templates-configmap.yaml").read_text())
    pod = pod_of(spec("tf-savedmodel"), cm["data"]["with-sidecar"])
    assert [c["name"] for c in pod["initContainers"]] == ["tfconvert"]
    assert "initContainers" not in pod_of(spec("keras"), cm["data"]["with-sidecar"])


def test_runtime_settings_know_keras_files_and_send_savedmodels_to_tfconvert() -> None:
    from kubemaas_runtime.errors import StartupError
    from kubemaas_runtime.settings import load_settings

    assert load_settings(["--model-uri", "m.keras"], {}).model_format == "keras"
    assert load_settings(["--model-uri", "s3://b/m.h5"], {}).model_format == "keras"
    with pytest.raises(StartupError, match=r"python -m kubemaas_runtime\.tfconvert"):
        load_settings(["--model-uri", "saved", "--format", "tf-savedmodel"], {})


def test_tensorflow_functions_of_tf_keras_are_refused_as_such() -> None:
    """A tf.keras functional model's x[:, :3] * 2.0 is written as SlicingOpLambda and
    TFOpLambda layers; they were refused as "not a built-in Keras layer ... custom layer code
    is not loaded", though the model has no custom code: they need TensorFlow."""
    k2 = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "config": {"name": "v"}},
        {"class_name": "SlicingOpLambda", "config": {"name": "tf.__operators__.getitem",
                                                     "function": "__operators__.getitem"}},
        {"class_name": "TFOpLambda", "config": {"name": "tf.math.multiply",
                                                "function": "math.multiply"}}]}}
    found = find_refusals(k2, BUILTIN)
    assert [(r.layer, r.class_name) for r in found] == [
        ("tf.__operators__.getitem", "SlicingOpLambda"), ("tf.math.multiply", "TFOpLambda")]
    assert found[1].message() == (
        "cannot serve layer 'tf.math.multiply' (class TFOpLambda): it is a TensorFlow function "
        "that tf.keras applied to a Keras tensor; Keras 3 cannot run it without TensorFlow: "
        "save the model as a SavedModel and deploy it with format tf-savedmodel, or rebuild it "
        "with Keras layers or keras.ops")


def test_string_inputs_and_tensorflow_only_layers_are_refused_with_the_way_to_serve_them(
        ) -> None:
    """Keras runs TextVectorization, StringLookup, ... only on TensorFlow, and on torch has no
    string tensors: a model with them was refused by Keras itself ('Layer StringLookup requires
    TensorFlow. Install it via `pip install tensorflow`.'), advice no runtime user can follow;
    now it is named before Keras loads it, with the SavedModel route (BYTES inputs)."""
    cfg = model(layer("InputLayer", "word", dtype="string", batch_shape=[None, 1]),
                layer("StringLookup", "lookup"), layer("Embedding", "emb"),
                layer("TextVectorization", "vec"))
    found = find_refusals(cfg, BUILTIN | {"StringLookup", "TextVectorization"})
    assert [(r.layer, r.class_name) for r in found] == [
        ("word", "InputLayer"), ("lookup", "StringLookup"), ("vec", "TextVectorization")]
    assert all("tf-savedmodel" in r.message() and "BYTES" in r.message() for r in found)
    assert find_refusals(model(layer("InputLayer", "x", dtype="int32")), BUILTIN) == []
