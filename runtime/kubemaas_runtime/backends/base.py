"""The one Model protocol every backend implements, and the tensor metadata it exposes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Open Inference Protocol datatype <-> numpy dtype.
DATATYPE_TO_NUMPY: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
NUMPY_TO_DATATYPE: dict[np.dtype[np.generic], str] = {v: k for k, v in DATATYPE_TO_NUMPY.items()}


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype of a numpy array (strings and bytes are BYTES)."""
    dt = NUMPY_TO_DATATYPE.get(array.dtype)
    if dt is not None:
        return dt
    if array.dtype.kind in ("S", "U", "O"):
        return "BYTES"
    raise TypeError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")


@dataclass(frozen=True)
class TensorSpec:
    """Name, datatype and shape of one model input or output; -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...] | None  # None: rank unknown (some TorchScript models)
    # the name of each dynamic dimension, where the model names it (ONNX's dim_param): the
    # dimensions of the inputs that share a name must have the same size in a request
    dims: tuple[str | None, ...] | None = None

    def metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype,
                "shape": list(self.shape) if self.shape is not None else [-1]}


class Model(Protocol):
    """A loaded model. ``run`` blocks; it is called from a worker thread, or on the event loop
    when ``batching.Batcher`` measured calls of those shapes to be cheaper than the hand-off.

    The async side (queueing, batching, timeouts) lives in ``batching.Batcher``, which is the
    object the dataplane awaits; backends stay plain and synchronous so the same code runs in
    benchmarks and tests without an event loop.
    """

    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    device: str

    @property
    def batchable(self) -> bool:
        """True when every input and output has a dynamic first (batch) dimension."""
        ...

    def run(self, inputs: Mapping[str, np.ndarray],
            output_names: Sequence[str] | None) -> dict[str, np.ndarray]:
        """Run the model; returns the requested outputs (all when output_names is None)."""
        ...

    def warmup(self) -> None:
        """Run once on zeros so that the first real request is not slow."""
        ...

    def close(self) -> None: ...


def batch_dim_dynamic(specs: Sequence[TensorSpec]) -> bool:
    return all(s.shape is not None and len(s.shape) >= 1 and s.shape[0] == -1 for s in specs)


def warmup_inputs(specs: Sequence[TensorSpec]) -> dict[str, np.ndarray] | None:
    """Zeros of each input's shape with dynamic dimensions set to 1; None when unknowable."""
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.shape is None or spec.datatype == "BYTES":
            return None
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        feeds[spec.name] = np.zeros(shape, dtype=DATATYPE_TO_NUMPY[spec.datatype])
    return feeds
