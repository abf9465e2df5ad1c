"""TensorFlow Serving's v1 predict JSON (``POST /v1/models/NAME:predict``, which KServe's v1
protocol speaks too) <-> numpy. Transport-agnostic, as codecs.py.

Both of TF Serving's request formats:

* row ("instances"): ``{"instances": [row, ...]}`` -> ``{"predictions": [row, ...]}``. A row is
  the input's value, or, when the model takes several inputs, an object keyed by input name;
  every row must give every input.
* columnar ("inputs"): ``{"inputs": tensor}`` or ``{"inputs": {name: tensor, ...}}`` ->
  ``{"outputs": tensor}`` (one output) or ``{"outputs": {name: tensor, ...}}``. Each tensor is the
  whole batch, its first dimension the rows.

``signature_name`` may be given: the one signature a model serves, ``serving_default`` unless the
runtime is told another (``--signature-name``: a SavedModel converted from that one). Binary
strings travel as ``{"b64": "..."}`` in BYTES inputs, and outputs whose name ends in ``_bytes``
are written that way, as TF Serving does; other BYTES outputs are written as UTF-8 text.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .backends.base import DATATYPE_TO_NUMPY, TensorSpec
from .codecs import dumps_json, flatten, json_tensor
from .errors import InvalidInput
from .request_json import loads_json

SIGNATURE = "serving_default"


def decode_predict(body: bytes, specs: Sequence[TensorSpec], signature: str = SIGNATURE,
                   ) -> tuple[dict[str, np.ndarray], bool]:
    """The request's input arrays, and whether it used the columnar format. `signature`: the
    one signature_name the model serves."""
    try:
        doc = loads_json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict) or ("instances" in doc) == ("inputs" in doc):
        raise InvalidInput('the body must be {"instances": [...]} (row format) or '
                           '{"inputs": ...} (columnar format), one of the two')
    asked = doc.get("signature_name", signature)
    if asked != signature:
        raise InvalidInput(f"unknown signature_name {asked!r}; the model serves {signature!r}")
    if "inputs" in doc:
        return columns_to_inputs(doc["inputs"], specs), True
    return instances_to_inputs(doc["instances"], specs), False


def encode_predict(outputs: Mapping[str, np.ndarray], columnar: bool) -> bytes:
    finite = all(arr.dtype.kind not in "fc" or bool(np.isfinite(arr).all())
                 for arr in outputs.values())
    if columnar:
        tensors = {name: _json_value(name, arr) for name, arr in outputs.items()}
        body = next(iter(tensors.values())) if len(tensors) == 1 else tensors
        return dumps_json({"outputs": body}, finite)
    return dumps_json({"predictions": outputs_to_predictions(outputs)}, finite)


def instances_to_inputs(instances: object, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Row format -> batched input arrays."""
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list")
    if len(specs) == 1 and not all(_is_row_object(i) for i in instances):
        columns: dict[str, list[object]] = {specs[0].name: instances}
    else:
        columns = {s.name: [] for s in specs}
        for row in instances:
            if not _is_row_object(row):
                raise InvalidInput("with several inputs, each instance must be an object "
                                   f"keyed by input name ({', '.join(columns)})")
            for key, value in row.items():
                if key not in columns:
                    raise InvalidInput(f"unknown input {key!r}; the model takes "
                                       f"{', '.join(columns)}")
                columns[key].append(value)
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        column = columns.get(spec.name)
        if not column or len(column) != len(instances):
            raise InvalidInput(f"every instance must give input {spec.name!r}")
        if spec.datatype == "BYTES":
            arrays[spec.name] = _string_rows(column, spec)
        else:
            try:
                arrays[spec.name] = _numeric(column, spec)
            except InvalidInput as exc:
                raise InvalidInput(f"'instances': {exc}") from None
    return arrays


def columns_to_inputs(inputs: object, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Columnar format -> input arrays (each already the whole batch)."""
    names = [s.name for s in specs]
    if isinstance(inputs, dict) and not _is_b64(inputs):
        unknown = [key for key in inputs if key not in names]
        if unknown:
            raise InvalidInput(f"unknown input {unknown[0]!r}; the model takes "
                               f"{', '.join(names)}")
        tensors: dict[str, object] = inputs
    elif len(specs) == 1:
        tensors = {names[0]: inputs}
    else:
        raise InvalidInput("with several inputs, 'inputs' must be an object keyed by input "
                           f"name ({', '.join(names)})")
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in tensors:
            raise InvalidInput(f"'inputs' must give input {spec.name!r}")
        value = tensors[spec.name]
        if not isinstance(value, list) or not value:
            raise InvalidInput(f"input {spec.name!r}: a tensor whose first dimension is the "
                               "batch (a non-empty list)")
        if spec.datatype == "BYTES":
            arrays[spec.name] = _bytes_tensor(value, spec.name)
        else:
            arrays[spec.name] = _numeric(value, spec)
    return arrays


def _string_rows(column: list[object], spec: TensorSpec) -> np.ndarray:
    """Rows of strings as a BYTES input: one string per row is a [n] tensor for a [-1] input and
    [n, 1] for any other (a [-1, 1] text input); nested rows keep their shape."""
    arr = _bytes_tensor(column, spec.name)
    if arr.ndim == 1 and (spec.shape is None or len(spec.shape) != 1):
        return arr.reshape(len(column), 1)
    return arr


def outputs_to_predictions(outputs: Mapping[str, np.ndarray]) -> list[Any]:
    """Batched outputs -> 'predictions' rows (a value per row, or an object per row)."""
    if len(outputs) == 1:
        ((name, arr),) = outputs.items()
        return _json_rows(name, arr)
    columns = {name: _json_rows(name, arr) for name, arr in outputs.items()}
    sizes = {name: len(c) for name, c in columns.items()}
    if len(set(sizes.values())) > 1:  # TF Serving refuses this too (InvalidArgument)
        listed = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise InvalidInput(f"the model's outputs have different batch sizes ({listed}), so "
                           "they cannot be split into rows: use the columnar format "
                           '{"inputs": ...}')
    rows = next(iter(sizes.values()))
    return [{name: columns[name][i] for name in columns} for i in range(rows)]


def _numeric(value: list[Any], spec: TensorSpec) -> np.ndarray:
    return json_tensor(value, spec.datatype, DATATYPE_TO_NUMPY[spec.datatype], spec.name)


def _is_b64(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _is_row_object(value: object) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _bytes_tensor(value: list[Any], name: str) -> np.ndarray:
    """A BYTES tensor from nested lists of strings (UTF-8) and {"b64": ...} objects."""
    try:
        shape = np.shape(np.asarray(value, dtype=np.object_))
    except ValueError:
        shape = ()
    flat: list[object] = []
    flatten(value, flat)
    items: list[bytes] = []
    for item in flat:
        if isinstance(item, str):
            items.append(item.encode("utf-8"))
        elif isinstance(item, dict) and _is_b64(item) and isinstance(item["b64"], str):
            try:
                items.append(base64.b64decode(item["b64"], validate=True))
            except binascii.Error:
                raise InvalidInput(f"input {name!r}: a 'b64' value is not base64") from None
        else:
            raise InvalidInput(f"input {name!r}: BYTES data must be strings or "
                               f'{{"b64": "..."}} objects, got {type(item).__name__}')
    if not shape or math.prod(shape) != len(items):
        raise InvalidInput(f"input {name!r}: data is not a rectangular list of BYTES values")
    arr = np.empty(len(items), dtype=np.object_)
    arr[:] = items
    return arr.reshape(shape)


def _json_value(name: str, arr: np.ndarray) -> Any:
    if arr.dtype == np.object_:
        encode = _b64 if name.endswith("_bytes") else _text
        return np.vectorize(encode, otypes=[np.object_])(arr).tolist()
    return arr.tolist()


def _json_rows(name: str, arr: np.ndarray) -> list[Any]:
    value = _json_value(name, arr)
    return value if arr.ndim else [value]


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _b64(value: object) -> dict[str, str]:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return {"b64": base64.b64encode(raw).decode("ascii")}
