"""JSON tensor data as the v2 protocol's decoder reads it: integers of the whole UINT64 range
(numpy reads one of 2**63 or more beside others as a float, losing its low digits, which made
tritonclient's JSON requests of such values a 400), and what the datatype does not hold
refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kubemaas_runtime.codecs import decode_infer_request
from kubemaas_runtime.errors import InvalidInput


def decoded(data: list[object], datatype: str, shape: list[int]) -> np.ndarray:
    body = json.dumps({"inputs": [{"name": "u", "shape": shape, "datatype": datatype,
                                   "data": data}]}).encode()
    return decode_infer_request(body, None).inputs["u"]


def test_the_whole_uint64_range() -> None:
    top = (1 << 64) - 1
    got = decoded([top, 0, 1 << 63, 7], "UINT64", [2, 2])
    assert got.dtype == np.uint64 and got.tolist() == [[top, 0], [1 << 63, 7]]
    assert decoded([[1 << 63], [1]], "UINT64", [2, 1]).tolist() == [[1 << 63], [1]]


@pytest.mark.parametrize(("data", "datatype", "words"), [
    ([1 << 64, 0], "UINT64", "must be integers"),  # the JSON reader's float already
    ([1 << 63, -1], "UINT64", "out of range"),
    ([1 << 63, 0], "INT64", "out of range"),
    ([1.5, 1 << 63], "UINT64", "must be integers"),
    ([1.0, 2], "INT32", "must be integers"),
    ([300, 0], "INT8", "out of range"),
    # numpy parsed numeric strings and booleans into floats: "4" and "nan" reached the model
    (["4", 1], "FP32", "must be numbers"),
    (["nan", "1e3"], "FP64", "must be numbers"),
    ([True, False], "FP16", "must be numbers"),
])
def test_what_no_type_holds_is_refused(data: list[object], datatype: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        decoded(data, datatype, [len(data)])


def test_a_null_in_float_data_is_refused_and_nan_kept() -> None:
    # numpy reads null as NaN: a client's missing value would reach the model as one
    with pytest.raises(InvalidInput, match="got null"):
        decoded([1.0, None], "FP32", [2])
    got = decoded([1.0, float("nan"), float("inf")], "FP32", [3])  # JSON's NaN extension
    assert np.isnan(got[1]) and np.isinf(got[2]) and got[0] == 1.0
