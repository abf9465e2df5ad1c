"""The textbook Keras models, built by real TensorFlow 2.21 in a side virtualenv (random weights,
no data), served by the runtime as a real process: `.keras` and legacy `.h5` (Keras 3 on the
torch backend), SavedModels (converted to ONNX by kubemaas_runtime.tfconvert with tf2onnx in the
TensorFlow venv, then served by onnxruntime). Every answer, through the TF Serving v1 route and
through Open Inference Protocol v2, equals TensorFlow's own model.predict to float tolerance."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from . import keras_models
from .conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def keras_dir() -> Path:
    """Built on first use with the TensorFlow venv (keras_models.tf_python), then cached."""
    return keras_models.keras_models_dir()


def tfconvert(uri: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The converter as the init container runs it (TensorFlow venv, this tree's package)."""
    return keras_models.tfconvert(["--model-uri", uri, "--out", str(out), *extra])


# (file, inputs, TensorFlow's answers): Keras 3 files, Keras 2 (tf-keras) legacy files, SavedModels
CASES = [
    ("mnist.keras", "mnist_x", "mnist_want"),
    ("mnist.h5", "mnist_x", "mnist_want"),
    ("mnist_k2.h5", "mnist_x", "mnist_k2_want"),
    ("mnist_savedmodel", "mnist_x", "mnist_want"),
    ("mnist_k2_savedmodel", "mnist_x", "mnist_k2_want"),
    ("text.keras", "text_x", "text_want"),
    ("text.h5", "text_x", "text_want"),
    ("text_k2.h5", "text_x", "text_k2_want"),
    ("text_savedmodel", "text_x", "text_want"),
]


def _check_answers(server: Any, name: str, x: np.ndarray, want: np.ndarray) -> None:
    status, meta = server.get_json(f"/v2/models/{name}")
    assert status == 200, meta
    (inp,) = meta["inputs"]
    (out,) = meta["outputs"]
    assert inp["shape"] == [-1, *x.shape[1:]], meta
    assert out["shape"] == [-1, *want.shape[1:]] and out["datatype"] == "FP32", meta

    # TF Serving v1, as Keras users send it: rows of nested lists, one row per example
    status, doc = server.post_json(f"/v1/models/{name}:predict", {"instances": x.tolist()})
    assert status == 200, doc
    np.testing.assert_allclose(np.asarray(doc["predictions"], np.float32), want,
                               rtol=1e-4, atol=1e-5)
    status, doc = server.post_json(f"/v1/models/{name}:predict", {"instances": [x[0].tolist()]})
    assert status == 200, doc
    np.testing.assert_allclose(np.asarray(doc["predictions"], np.float32), want[:1],
                               rtol=1e-4, atol=1e-5)

    # Open Inference Protocol v2 JSON, datatype from the metadata
    status, doc = server.post_json(f"/v2/models/{name}/infer", {"inputs": [
        {"name": inp["name"], "shape": list(x.shape), "datatype": inp["datatype"],
         "data": x.reshape(-1).tolist()}]})
    assert status == 200, doc
    (got,) = doc["outputs"]
    assert got["name"] == out["name"] and got["shape"] == list(want.shape)
    np.testing.assert_allclose(np.asarray(got["data"], np.float32).reshape(want.shape), want,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("filename", "x_name", "want_name"), CASES,
                         ids=[c[0] for c in CASES])
def test_answers_equal_tensorflow(runtime_server: Any, keras_dir: Path,
                                  tmp_path: Path, filename: str, x_name: str,
                                  want_name: str) -> None:
    x = np.load(keras_dir / f"{x_name}.npy")
    want = np.load(keras_dir / f"{want_name}.npy")
    args = ["--name", "clf", "--intra-op-threads", "1"]
    if filename.endswith("_savedmodel"):
        proc = tfconvert(str(keras_dir / filename), tmp_path / "converted")
        assert proc.returncode == 0, proc.stderr[-2000:]
        args += ["--model-uri", str(tmp_path / "converted" / "model.onnx")]
    else:
        args += ["--model-uri", str(keras_dir / filename)]
        if filename == "text.h5":  # the batcher in front of a Keras model too
            args += ["--max-batch-size", "4", "--max-batch-delay-ms", "2"]
    server = runtime_server(args, timeout=240)
    platform = "onnxruntime_onnx" if filename.endswith("_savedmodel") else "keras"
    assert server.get_json("/v2/models/clf")[1]["platform"] == platform
    _check_answers(server, "clf", x, want)


@pytest.mark.parametrize(("filename", "layer", "words"), [
    ("custom.keras", "scale", "demo>Scale"),
    ("lambda.keras", "plus_one", "Lambda"),
    # (was Keras's own "Layer StringLookup requires TensorFlow. Install it via pip ...")
    ("words.keras", "word", "tf-savedmodel, where a string input is a BYTES tensor"),
])
def test_unservable_layer_is_refused_in_one_line(runtime_server: Any, keras_dir: Path,
                                                 filename: str, layer: str,
                                                 words: str) -> None:
    server = runtime_server(["--model-uri", str(keras_dir / filename)], ready=False)
    assert server.proc.wait(240) == 1
    server.stop()
    errors = [d for d in server.logs() if d.get("level") == "error"]
    assert len(errors) == 1, server.lines
    msg = errors[0]["msg"]
    assert f"layer {layer!r}" in msg and words in msg and "\n" not in msg, msg
    assert "exc" not in errors[0] and not any("Traceback" in ln for ln in server.lines)


def test_a_string_input_is_a_bytes_tensor(runtime_server: Any, keras_dir: Path,
                                          tmp_path: Path) -> None:
    """A Keras model of a string input (StringLookup), served as its SavedModel: its metadata
    says BYTES, a BYTES tensor (OIP JSON) and strings (TF Serving v1) reach it and answer as
    TensorFlow does; another datatype is refused with 400."""
    x = np.load(keras_dir / "words_x.npy")
    want = np.load(keras_dir / "words_want.npy")
    proc = tfconvert(str(keras_dir / "words_savedmodel"), tmp_path / "converted")
    assert proc.returncode == 0, proc.stderr[-2000:]
    server = runtime_server(["--name", "w", "--model-uri",
                             str(tmp_path / "converted" / "model.onnx")], timeout=240)
    (inp,) = server.get_json("/v2/models/w")[1]["inputs"]
    assert (inp["name"], inp["datatype"], inp["shape"]) == ("word", "BYTES", [-1, 1])
    status, doc = server.post_json("/v2/models/w/infer", {"inputs": [
        {"name": "word", "shape": list(x.shape), "datatype": "BYTES",
         "data": x.reshape(-1).tolist()}]})
    assert status == 200, doc
    np.testing.assert_allclose(np.asarray(doc["outputs"][0]["data"], np.float32).reshape(
        want.shape), want, rtol=1e-5, atol=1e-6)
    status, doc = server.post_json("/v1/models/w:predict", {"instances": x.tolist()})
    assert status == 200, doc
    np.testing.assert_allclose(np.asarray(doc["predictions"], np.float32), want, rtol=1e-5,
                               atol=1e-6)
    status, doc = server.post_json("/v2/models/w/infer", {"inputs": [
        {"name": "word", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]})
    assert status == 400 and "expects BYTES" in doc["error"], doc


def test_tfconvert_caches_by_checksum_and_checks_it(keras_dir: Path,
                                                    tmp_path: Path) -> None:
    saved = keras_dir / "mnist_savedmodel"
    out = tmp_path / "converted"
    first = tfconvert(str(saved), out)
    assert first.returncode == 0 and "converted" in first.stderr, first.stderr[-2000:]
    digest = tfconvert("", out, "--digest", str(saved)).stdout.strip()
    assert (out / "by-sha256" / digest / "model.onnx").is_file()
    again = tfconvert(f"file://{saved}", out, "--model-sha256", digest)
    assert again.returncode == 0 and "cached" in again.stderr, again.stderr[-2000:]
    wrong = tfconvert(str(saved), out, "--model-sha256", "0" * 64)
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines() == [
        f"tfconvert: error: checksum mismatch for {saved}: expected sha256 {'0' * 64}, got "
        f"{digest} (the digest of the SavedModel's files; see --digest)"]
    empty = tmp_path / "empty"
    empty.mkdir()
    none = tfconvert(str(empty), out)
    assert none.returncode == 1 and len(none.stderr.strip().splitlines()) == 1, none.stderr
    assert "saved_model.pb" in none.stderr


def test_tfconvert_takes_an_archive_checked_by_its_sha256(keras_dir: Path,
                                                          tmp_path: Path) -> None:
    import tarfile

    import onnxruntime as ort

    archive = tmp_path / "mnist.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(keras_dir / "mnist_savedmodel", arcname="mnist/1")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    out = tmp_path / "converted"
    proc = tfconvert(f"file://{archive}", out, "--model-sha256", sha)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "by-sha256" / sha / "model.onnx").is_file() and not (out / "work").exists()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixels": np.load(keras_dir / "mnist_x.npy")})
    np.testing.assert_allclose(got, np.load(keras_dir / "mnist_want.npy"), rtol=1e-4, atol=1e-5)


def test_savedmodel_with_an_unconvertible_op_is_refused_in_one_line(keras_dir: Path,
                                                                      tmp_path: Path) -> None:
    proc = tfconvert(str(keras_dir / "unsupported_savedmodel"), tmp_path / "converted")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "tfconvert: error: tf2onnx cannot convert unsupported_savedmodel: TensorFlow op "
        "HistogramFixedWidth (node PartitionedCall/histogram_fixed_width) is not supported by "
        "tf2onnx"], proc.stderr[-2000:]
    assert not (tmp_path / "converted" / "model.onnx").exists()


def test_runtime_refuses_savedmodel_with_the_way_to_serve_it(keras_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "kubemaas_runtime",
                           "--model-uri", str(keras_dir / "mnist_savedmodel"),
                           "--format", "tf-savedmodel"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "tf-savedmodel" in line and "kubemaas_runtime.tfconvert" in line, line


SIGNATURES = """
import sys
import tensorflow as tf

class M(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def serve(self, x):
        return {"y": x + 1.0}

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def other(self, x):
        return {"y": x * 100.0}

m = M()
tf.saved_model.save(m, sys.argv[1], signatures={"a_other": m.other, "serving_default": m.serve})
print(list(tf.saved_model.load(sys.argv[1]).signatures))
"""


def save_signatures(script: str, saved: Path) -> str:
    """Run a SIGNATURES-like script with the TensorFlow venv: the SavedModel at ``saved``;
    the signatures TensorFlow lists, as it prints them."""
    made = subprocess.run([str(keras_models.tf_python()), "-c", script, str(saved)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "",
                               "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert made.returncode == 0, made.stderr[-2000:]
    return made.stdout.split("\n")[-2]


def test_a_savedmodel_with_several_signatures_serves_serving_default(tmp_path: Path) -> None:
    """TensorFlow Serving answers with serving_default (and the v1 route takes no other);
    tf2onnx converts the first signature TensorFlow lists unless told, which was another one
    here: the runtime answered x * 100 where TensorFlow Serving answers x + 1."""
    import onnxruntime as ort

    saved = tmp_path / "two_signatures"
    listed = save_signatures(SIGNATURES, saved)
    assert listed == "['a_other', 'serving_default']"  # another first
    proc = tfconvert(str(saved), tmp_path / "converted")
    assert proc.returncode == 0, proc.stderr[-2000:]
    session = ort.InferenceSession(str(tmp_path / "converted" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(got, np.full((2, 3), 2.0, np.float32))


NO_DEFAULT = SIGNATURES.replace('{"a_other": m.other, "serving_default": m.serve}',
                                '{"predict": m.other, "classify": m.serve}')


def test_a_savedmodel_without_serving_default_serves_the_signature_named(
        runtime_server: Any, tmp_path: Path) -> None:
    """A SavedModel whose signatures are predict and classify, no serving_default: it could not
    be served at all ('which one to serve is unknown'). --signature (spec.model.signature)
    picks one, and the runtime's v1 route takes that name (--signature-name)."""
    saved = tmp_path / "no_default"
    save_signatures(NO_DEFAULT, saved)
    refused = tfconvert(str(saved), tmp_path / "refused")
    assert refused.returncode == 1 and "spec.model.signature" in refused.stderr, refused.stderr
    unknown = tfconvert(str(saved), tmp_path / "unknown", "--signature", "nope")
    assert unknown.returncode == 1, unknown.stderr
    assert "no signature 'nope'; it has classify, predict" in unknown.stderr, unknown.stderr
    out = tmp_path / "converted"
    proc = tfconvert(str(saved), out, "--signature", "predict")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(out.glob("by-sha256/*/signatures/predict/model.onnx"))  # cached apart
    server = runtime_server(["--model-uri", str(out / "model.onnx"), "--name", "m",
                             "--signature-name", "predict"])
    x = [[1.0, 2.0, 3.0]]
    for doc in ({"instances": x}, {"signature_name": "predict", "instances": x}):
        status, answer = server.post_json("/v1/models/m:predict", doc)
        assert (status, answer) == (200, {"predictions": [[100.0, 200.0, 300.0]]}), doc
    status, answer = server.post_json("/v1/models/m:predict",
                                      {"signature_name": "serving_default", "instances": x})
    assert status == 400 and "'predict'" in answer["error"], answer
