"""TensorFlow Serving's predict JSON (codecs_v1.py): the row and columnar formats, base64
strings, and the values a datatype does not hold refused."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from kubemaas_runtime.backends.base import TensorSpec
from kubemaas_runtime.codecs_v1 import decode_predict, encode_predict
from kubemaas_runtime.errors import InvalidInput

X = TensorSpec("x", "FP32", (-1, 2))
IDS = TensorSpec("ids", "INT64", (-1,))
TEXT = TensorSpec("text", "BYTES", (-1, 1))


def decode(doc: Any, *specs: TensorSpec) -> tuple[dict[str, np.ndarray], bool]:
    return decode_predict(json.dumps(doc).encode(), list(specs))


def test_rows_and_columns_give_the_same_arrays() -> None:
    rows, columnar = decode({"instances": [{"x": [1, 2], "ids": 3}, {"x": [4, 5], "ids": 6}]},
                            X, IDS)
    columns, is_columnar = decode({"signature_name": "serving_default",
                                   "inputs": {"x": [[1, 2], [4, 5]], "ids": [3, 6]}}, X, IDS)
    assert (columnar, is_columnar) == (False, True)
    for name in ("x", "ids"):
        np.testing.assert_array_equal(rows[name], columns[name])
    assert columns["x"].dtype == np.float32 and columns["ids"].dtype == np.int64
    alone, _ = decode({"inputs": [[1, 2]]}, X)  # one input: the tensor itself
    assert alone["x"].tolist() == [[1.0, 2.0]]


def test_base64_strings_in_and_out() -> None:
    blob = bytes(range(256))
    encoded = {"b64": base64.b64encode(blob).decode()}
    got, _ = decode({"instances": [encoded, "plain"]}, TEXT)
    assert got["text"].tolist() == [[blob], [b"plain"]]
    got, _ = decode({"inputs": {"text": [[encoded], ["plain"]]}}, TEXT)
    assert got["text"].tolist() == [[blob], [b"plain"]]
    outputs = {"image_bytes": np.array([blob], dtype=np.object_),
               "label": np.array([b"cat"], dtype=np.object_)}
    doc = json.loads(encode_predict(outputs, columnar=True))
    assert doc == {"outputs": {"image_bytes": [encoded], "label": ["cat"]}}
    doc = json.loads(encode_predict(outputs, columnar=False))
    assert doc == {"predictions": [{"image_bytes": encoded, "label": "cat"}]}


def test_string_rows_keep_the_shape_the_model_takes() -> None:
    # rows of a [-1] BYTES input were made [n, 1] (then refused: 'has shape [2, 1], the model
    # expects [-1]'), and rows of a [-1, 2, 2] one were flattened to [n, 4]
    got, _ = decode({"instances": ["a", {"b64": "aGk="}]}, TensorSpec("s", "BYTES", (-1,)))
    assert got["s"].shape == (2,) and got["s"].tolist() == [b"a", b"hi"]
    grid = TensorSpec("g", "BYTES", (-1, 2, 2))
    got, _ = decode({"instances": [[["a", "b"], ["c", "d"]]]}, grid)
    assert got["g"].shape == (1, 2, 2)
    got, _ = decode({"instances": ["a", "b"]}, TEXT)  # a [-1, 1] input: each row one string
    assert got["text"].shape == (2, 1)


def test_rows_of_outputs_with_different_batches_are_refused() -> None:
    # an output that does not keep the batch (a count of shape [1] beside 2 rows) cut the
    # predictions to 1 row: the second row's answer was lost from a 200
    outputs = {"echo": np.array([b"a", b"b"], dtype=np.object_),
               "n": np.array([2], dtype=np.int64)}
    with pytest.raises(InvalidInput, match="columnar"):
        encode_predict(outputs, columnar=False)
    doc = json.loads(encode_predict(outputs, columnar=True))
    assert doc == {"outputs": {"echo": ["a", "b"], "n": [2]}}


def test_one_output_is_written_bare() -> None:
    y = {"y": np.array([[0.5], [1.5]], dtype=np.float32)}
    assert json.loads(encode_predict(y, columnar=True)) == {"outputs": [[0.5], [1.5]]}
    assert json.loads(encode_predict(y, columnar=False)) == {"predictions": [[0.5], [1.5]]}


@pytest.mark.parametrize(("doc", "specs", "words"), [
    ({"instances": [[1, 2]], "inputs": [[1, 2]]}, [X], "one of the two"),
    ({}, [X], "one of the two"),
    ({"inputs": [[1, 2]], "signature_name": "predict"}, [X], "signature_name"),
    ({"inputs": {"x": [[1, 2]], "q": [1]}}, [X, IDS], "unknown input 'q'"),
    ({"inputs": {"x": [[1, 2]]}}, [X, IDS], "must give input 'ids'"),
    ({"inputs": [[1, 2]]}, [X, IDS], "keyed by input name"),
    ({"inputs": {"x": 3}}, [X], "first dimension is the batch"),
    ({"instances": [[1, None]]}, [X], "got null"),
    ({"inputs": [[1, None]]}, [X], "got null"),
    ({"instances": [1.5]}, [IDS], "must be integers"),
    ({"instances": [[1, "2"]]}, [X], "must be numbers"),
    ({"inputs": [[True, False]]}, [X], "must be numbers"),
    ({"instances": [[1, 2], [3]]}, [X], "instances"),
    ({"instances": [{"b64": "not base64!"}]}, [TEXT], "not base64"),
    ({"inputs": [["a"], ["b", "c"]]}, [TEXT], "rectangular"),
    ({"instances": [{"x": [1, 2], "q": 1}]}, [X, IDS], "unknown input 'q'"),
])
def test_what_the_model_cannot_take_is_refused(doc: Any, specs: list[TensorSpec],
                                               words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        decode(doc, *specs)
