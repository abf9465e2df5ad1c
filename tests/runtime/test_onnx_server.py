"""The runtime as a real process serving real ONNX models, driven by real clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import wait_for

from .conftest import Server, assert_as_reference, ort_run, start_server


@pytest.fixture(scope="module")
def tiny(tiny_onnx: Path) -> Iterator[Server]:
    server = start_server(["--model-uri", str(tiny_onnx), "--name", "tiny", "--version", "3",
                           "--max-request-bytes", "65536"])
    yield server
    assert server.stop() == 0


def triton(server: Server) -> Any:
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")


def test_health_and_metadata(tiny: Server) -> None:
    assert tiny.get_json("/v2/health/live") == (200, {"live": True})
    assert tiny.get_json("/v2/health/ready") == (200, {"ready": True})
    status, meta = tiny.get_json("/v2")
    assert status == 200 and meta["name"] == "kubemaas"
    assert "binary_tensor_data" in meta["extensions"]
    status, model = tiny.get_json("/v2/models/tiny")
    assert status == 200
    assert model == {
        "name": "tiny", "versions": ["3"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]},
                    {"name": "z", "datatype": "FP32", "shape": [-1, 3]}]}
    assert tiny.get_json("/v2/models/tiny/versions/3")[1] == model
    assert tiny.get_json("/v2/models/tiny/ready") == (200, {"name": "tiny", "ready": True})
    assert tiny.get_json("/v2/models/tiny/versions/3/ready")[0] == 200
    assert tiny.get_json("/v2/models/tiny/versions/4/ready")[0] == 404
    assert tiny.get_json("/v2/models/other")[0] == 404


def test_json_infer_matches_onnxruntime(tiny: Server, tiny_onnx: Path) -> None:
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    status, doc = tiny.post_json("/v2/models/tiny/infer", {
        "id": "req-1",
        "inputs": [{"name": "x", "shape": [5, 4], "datatype": "FP32", "data": x.tolist()}]})
    assert status == 200, doc
    assert doc["id"] == "req-1" and doc["model_name"] == "tiny" and doc["model_version"] == "3"
    want = ort_run(tiny_onnx, {"x": x})
    got = {o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"])
           for o in doc["outputs"]}
    assert set(got) == {"y", "z"}
    for name in got:
        assert_as_reference(got[name], want[name])
    # requested-output selection
    status, doc = tiny.post_json("/v2/models/tiny/infer", {
        "inputs": [{"name": "x", "shape": [5, 4], "datatype": "FP32", "data": x.ravel().tolist()}],
        "outputs": [{"name": "z"}]})
    assert status == 200 and [o["name"] for o in doc["outputs"]] == ["z"]


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient(tiny: Server, tiny_onnx: Path, binary: bool) -> None:
    import tritonclient.http as httpclient

    client = triton(tiny)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny")
        assert client.get_model_metadata("tiny")["inputs"][0]["shape"] == [-1, 4]
        x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        want = ort_run(tiny_onnx, {"x": x})
        result = client.infer("tiny", [inp], outputs=[
            httpclient.InferRequestedOutput("y", binary_data=binary)])
        assert_as_reference(result.as_numpy("y"), want["y"])
        assert result.as_numpy("z") is None
        # no outputs named: every output comes back (binary by default in tritonclient)
        result = client.infer("tiny", [inp], model_version="3")
        for name in ("y", "z"):
            assert_as_reference(result.as_numpy(name), want[name])
    finally:
        client.close()


def test_v1_predict(tiny: Server, tiny_onnx: Path) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 0.0]]
    status, doc = tiny.post_json("/v1/models/tiny:predict", {"instances": rows})
    assert status == 200, doc
    want = ort_run(tiny_onnx, {"x": np.array(rows, dtype=np.float32)})
    assert_as_reference(np.array([p["y"] for p in doc["predictions"]], dtype=np.float32),
                        want["y"])
    assert tiny.get_json("/v1/models/tiny") == (200, {"name": "tiny", "ready": True})


def test_v1_predict_columnar(tiny: Server, tiny_onnx: Path) -> None:
    """TF Serving's columnar format: the batch as one tensor per input, one per output back."""
    rows = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 0.0]]
    status, doc = tiny.post_json("/v1/models/tiny:predict",
                                 {"signature_name": "serving_default", "inputs": {"x": rows}})
    assert status == 200, doc
    want = ort_run(tiny_onnx, {"x": np.array(rows, dtype=np.float32)})
    assert set(doc) == {"outputs"} and set(doc["outputs"]) == {"y", "z"}
    for name in ("y", "z"):
        assert_as_reference(np.array(doc["outputs"][name], dtype=np.float32), want[name])


def _x(shape: list[int], data: Any, datatype: str = "FP32", name: str = "x") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


BAD_REQUESTS = [
    ("wrong shape", "/v2/models/tiny/infer", _x([2, 3], [1] * 6), 400, "shape"),
    ("wrong rank", "/v2/models/tiny/infer", _x([4], [1] * 4), 400, "shape"),
    ("wrong datatype", "/v2/models/tiny/infer", _x([1, 4], [1] * 4, "INT64"), 400, "datatype"),
    ("unknown datatype", "/v2/models/tiny/infer", _x([1, 4], [1] * 4, "FP8"), 400, "datatype"),
    ("length mismatch", "/v2/models/tiny/infer", _x([2, 4], [1] * 7), 400, "elements"),
    ("ragged data", "/v2/models/tiny/infer", _x([2, 4], [[1] * 4, [1] * 3]), 400, "data"),
    ("strings for FP32", "/v2/models/tiny/infer", _x([1, 4], ["a"] * 4), 400, "FP32"),
    ("missing input", "/v2/models/tiny/infer", _x([1, 4], [1] * 4, name="q"), 400, "input"),
    ("no inputs", "/v2/models/tiny/infer", {"inputs": []}, 400, "inputs"),
    ("unknown output", "/v2/models/tiny/infer",
     {**_x([1, 4], [1] * 4), "outputs": [{"name": "nope"}]}, 400, "output"),
    ("negative dim", "/v2/models/tiny/infer", _x([-1, 4], [1] * 4), 400, "shape"),
    # no elements, but dimensions numpy cannot hold (were a 500 'internal error')
    ("huge empty shape", "/v2/models/tiny/infer", _x([2 ** 62, 0], []), 400, "shape"),
    ("dim past int64", "/v2/models/tiny/infer", _x([2 ** 63, 0], []), 400, "shape"),
    ("unknown model", "/v2/models/nope/infer", _x([1, 4], [1] * 4), 404, "nope"),
    ("unknown version", "/v2/models/tiny/versions/9/infer", _x([1, 4], [1] * 4), 404, "9"),
    ("v1 not instances", "/v1/models/tiny:predict", {"rows": []}, 400, "instances"),
    ("v1 ragged", "/v1/models/tiny:predict", {"instances": [[1, 2], [3]]}, 400, "instances"),
    ("v1 both formats", "/v1/models/tiny:predict",
     {"instances": [[1] * 4], "inputs": [[1] * 4]}, 400, "one of the two"),
    ("v1 other signature", "/v1/models/tiny:predict",
     {"signature_name": "classify", "inputs": [[1] * 4]}, 400, "signature_name"),
    ("v1 null", "/v1/models/tiny:predict", {"inputs": [[1, 2, None, 4]]}, 400, "null"),
    ("null for FP32", "/v2/models/tiny/infer", _x([1, 4], [1, 2, None, 4]), 400, "null"),
]


@pytest.mark.parametrize(("case", "path", "doc", "status", "word"), BAD_REQUESTS,
                         ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_clean_4xx(tiny: Server, case: str, path: str, doc: Any, status: int,
                                    word: str) -> None:
    got, body = tiny.post_json(path, doc)
    assert got == status, body
    assert word.lower() in body["error"].lower()


def test_malformed_bodies_and_limits(tiny: Server) -> None:
    deep = b'{"inputs": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"  # past json.loads' depth
    lone = b'{"id": "\\ud800", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", ' \
        b'"data": [1, 2, 3, 4]}]}'  # an unpaired surrogate escape: not Unicode text
    for raw in (b"{not json", b"", b"[1,2]", b"\xff\xfe", deep, lone):
        status, _, body = tiny.request("POST", "/v2/models/tiny/infer", raw)
        assert status == 400 and "error" in json.loads(body)
    status, _headers, body = tiny.request("POST", "/v2/models/tiny/infer", b"x" * 70000)
    assert status == 413 and "limit" in json.loads(body)["error"]
    # binary extension errors: sizes that do not add up
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    for payload, hlen in ((header + b"\0" * 12, len(header)), (header + b"\0" * 20, len(header)),
                          (header + b"\0" * 16, len(header) + 100), (header, "abc")):
        status, _, body = tiny.request("POST", "/v2/models/tiny/infer", payload,
                                       {"Inference-Header-Content-Length": str(hlen)})
        assert status == 400, body
    for path in ("/v2/models/tiny/infer", "/v2/models/tiny/versions/3/infer",
                 "/v1/models/tiny:predict"):
        status, headers, _ = tiny.request("GET", path)
        assert status == 405 and headers["allow"] == "POST", path  # RFC 9110: the methods
    for path in ("/v2", "/v2/health/ready", "/v2/models/tiny", "/v2/models/tiny/ready",
                 "/v1/models/tiny"):
        status, headers, _ = tiny.request("POST", path, b"{}")
        assert status == 405 and headers["allow"] == "GET, HEAD", path
    assert tiny.request("POST", "/v2/models/tiny/x/y/infer", b"{}")[0] == 404
    assert tiny.request("GET", "/nope")[0] == 404
    # the server kept serving through all of it
    status, doc = tiny.post_json("/v2/models/tiny/infer", _x([1, 4], [1, 2, 3, 4]))
    assert status == 200, doc
    text = tiny.metrics()
    assert 'kubemaas_requests_total{model="tiny",endpoint="infer",outcome="client_error"}' in text
    assert 'kubemaas_requests_total{model="tiny",endpoint="infer",outcome="ok"}' in text


def test_light_model_from_onnx_wheel(runtime_server: Any, light_onnx: Path) -> None:
    server = runtime_server(["--model-uri", str(light_onnx), "--name", "squeezenet"])
    import tritonclient.http as httpclient

    meta = server.get_json("/v2/models/squeezenet")[1]
    (spec,) = meta["inputs"]
    assert spec["shape"] == [1, 3, 224, 224]
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    client = triton(server)
    try:
        inp = httpclient.InferInput(spec["name"], list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        result = client.infer("squeezenet", [inp])
        want = ort_run(light_onnx, {spec["name"]: x})
        for name, arr in want.items():
            np.testing.assert_allclose(result.as_numpy(name), arr, rtol=1e-5, atol=1e-6)
    finally:
        client.close()
    # a fixed batch of 1: a batch of 2 is a clean 400
    status, doc = server.post_json("/v2/models/squeezenet/infer", {"inputs": [{
        "name": spec["name"], "shape": [2, 3, 224, 224], "datatype": "FP32",
        "data": [0.0] * (2 * 3 * 224 * 224)}]})
    assert status == 400 and "shape" in doc["error"]


def test_expect_100_continue_is_answered(tiny: Server) -> None:
    import socket

    body = json.dumps(_x([1, 4], [1, 2, 3, 4])).encode()
    assert tiny.port is not None
    with socket.create_connection(("127.0.0.1", tiny.port), timeout=0.5) as sock:
        sock.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")  # no 1 s client stall
        sock.sendall(body)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")


def test_docs_list_every_setting() -> None:
    from kubemaas_runtime.settings import OPTIONS

    docs = (Path(__file__).resolve().parents[2] / "docs" / "runtime.md").read_text()
    missing = [o.env for o in OPTIONS if f"`{o.env}`" not in docs or f"`{o.flag}`" not in docs]
    assert missing == [], "docs/runtime.md lacks these settings"


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_tensors(runtime_server: Any, strings_onnx: Path, binary: bool) -> None:
    import tritonclient.http as httpclient

    server = runtime_server(["--model-uri", str(strings_onnx), "--name", "strings",
                             "--max-batch-size", "8"])
    meta = server.get_json("/v2/models/strings")[1]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    words = np.array(["héllo".encode(), b"", b"kubemaas"], dtype=np.object_)
    client = triton(server)
    try:
        tensor = httpclient.InferInput("text", [3], "BYTES")
        tensor.set_data_from_numpy(words, binary_data=binary)
        result = client.infer("strings", [tensor], outputs=[
            httpclient.InferRequestedOutput("echo", binary_data=binary),
            httpclient.InferRequestedOutput("n", binary_data=binary)])
        assert [bytes(w) if isinstance(w, bytes) else str(w).encode()
                for w in result.as_numpy("echo")] == list(words)
        assert result.as_numpy("n").tolist() == [3]
    finally:
        client.close()


def test_gzip_request_and_debug_access_log(runtime_server: Any, tiny_onnx: Path) -> None:
    import gzip

    import tritonclient.http as httpclient

    server = runtime_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                             "--log-level", "debug", "--max-request-bytes", "2048"])
    client = triton(server)
    try:
        x = np.ones((2, 4), dtype=np.float32)
        tensor = httpclient.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(x, binary_data=False)
        result = client.infer("tiny", [tensor], request_compression_algorithm="gzip",
                              response_compression_algorithm="gzip")
        assert result.as_numpy("z").shape == (2, 3)
    finally:
        client.close()
    # a small gzip body that inflates past the limit is refused, not inflated without bound
    bomb = gzip.compress(b" " * 100_000)
    status, _, body = server.request("POST", "/v2/models/tiny/infer", bomb,
                                     {"Content-Encoding": "gzip"})
    assert status == 413, body
    # the server logs before it answers, but the test reads its output on a thread of its own
    access = wait_for(lambda: [d for d in server.logs() if d.get("msg") == "request"],
                      timeout=10, what="the access log's records")
    assert access[0]["status"] == 200 and access[0]["endpoint"] == "infer"


def _seq(ids_shape: list[int], mask_shape: list[int]) -> dict[str, Any]:
    ids = np.arange(1, 1 + int(np.prod(ids_shape)), dtype=np.int64)
    return {"inputs": [
        {"name": "ids", "shape": ids_shape, "datatype": "INT64", "data": ids.tolist()},
        {"name": "mask", "shape": mask_shape, "datatype": "BOOL",
         "data": [True] * int(np.prod(mask_shape))}]}


def test_dimensions_the_model_names_alike_must_agree(runtime_server: Any,
                                                     seq_onnx: Path) -> None:
    # ids and mask are both [batch, len]: onnxruntime broadcast a 1-row mask over 2 rows of
    # ids (200, an answer for a request that is not the model's) and failed a len mismatch
    # with a 500
    server: Server = runtime_server(["--model-uri", str(seq_onnx), "--name", "seq"])
    for ids_shape, mask_shape, word in (([2, 2], [1, 2], "'batch'"), ([1, 3], [1, 2], "'len'")):
        status, doc = server.post_json("/v2/models/seq/infer", _seq(ids_shape, mask_shape))
        assert status == 400, doc
        assert word in doc["error"] and "'mask'" in doc["error"]
    status, doc = server.post_json("/v1/models/seq:predict", {"inputs": {
        "ids": [[1, 2], [3, 4]], "mask": [[True, True]]}})
    assert status == 400 and "'batch'" in doc["error"], doc
    status, doc = server.post_json("/v2/models/seq/infer", _seq([2, 3], [2, 3]))
    assert status == 200 and doc["outputs"][0]["data"] == [6, 15], doc
    status, meta = server.get_json("/v2/models/seq")
    assert meta["inputs"][0]["shape"] == [-1, -1]  # the metadata is as before


def test_binary_length_errors_say_what_is_wrong(tiny: Server) -> None:
    # a negative Inference-Header-Content-Length was 'larger than the body', and a negative
    # binary_data_size 'must be an integer'
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": -1}}]}).encode()
    status, _, body = tiny.request("POST", "/v2/models/tiny/infer", header + b"\0" * 16,
                                   {"Inference-Header-Content-Length": "-1"})
    assert status == 400
    assert json.loads(body)["error"] == ("Inference-Header-Content-Length -1 is not within the "
                                         f"body of {len(header) + 16} bytes")
    status, _, body = tiny.request("POST", "/v2/models/tiny/infer", header + b"\0" * 16,
                                   {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400
    assert json.loads(body)["error"] == ("input 'x': binary_data_size must be a non-negative "
                                         "integer")


def test_a_content_encoding_the_server_cannot_decode_is_a_415(tiny: Server) -> None:
    # aiohttp decodes gzip, deflate, br and zstd, and passed any other coding through as
    # identity: a compressed body was answered "malformed JSON: 'utf-8' codec can't decode..."
    body = json.dumps(_x([1, 4], [1, 2, 3, 4])).encode()
    for coding in ("compress", "gzip, br", "x-snappy"):
        status, _, raw = tiny.request("POST", "/v2/models/tiny/infer", body,
                                      {"Content-Encoding": coding})
        assert status == 415, raw
        assert json.loads(raw)["error"] == (
            f"Content-Encoding {coding!r} is not supported; use gzip, deflate, br, zstd or "
            "none")
    status, _, raw = tiny.request("POST", "/v1/models/tiny:predict", b'{"instances": [[1]]}',
                                  {"Content-Encoding": "compress"})
    assert status == 415, raw
    status, _, raw = tiny.request("POST", "/v2/models/tiny/infer", body,
                                  {"Content-Encoding": "identity"})
    assert status == 200, raw
