"""onnxruntime backend: CPU by default, the CUDA execution provider when asked or available."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidInput, StartupError
from .base import TensorSpec, batch_dim_dynamic, warmup_inputs

log = logging.getLogger("kubemaas.runtime.onnx")

_ONNX_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(arg: object) -> TensorSpec:
    name: str = getattr(arg, "name")  # noqa: B009 - onnxruntime NodeArg has no stubs
    onnx_type: str = getattr(arg, "type")  # noqa: B009
    datatype = _ONNX_TO_DATATYPE.get(onnx_type)
    if datatype is None:
        raise StartupError(f"ONNX tensor {name!r} has unsupported type {onnx_type}")
    raw_shape = getattr(arg, "shape")  # noqa: B009
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in raw_shape)
    dims = tuple(d if isinstance(d, str) and d else None for d in raw_shape)
    return TensorSpec(name=name, datatype=datatype, shape=shape,
                      dims=dims if any(dims) else None)


def _as_text(arr: np.ndarray, name: str) -> np.ndarray:
    """onnxruntime string tensors hold text: BYTES elements are decoded as UTF-8 (it would
    otherwise store the repr of a bytes object)."""
    out = np.empty(arr.shape, dtype=np.object_)
    flat_in, flat_out = arr.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        if isinstance(item, bytes):
            try:
                flat_out[i] = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input {name!r}: element {i} is not valid UTF-8, which "
                                   "ONNX string tensors require") from None
        else:
            flat_out[i] = str(item)
    return out


class OnnxModel:
    """One onnxruntime InferenceSession; ``run`` is thread-safe (onnxruntime guarantees it)."""

    platform = "onnxruntime_onnx"

    def __init__(self, path: Path, *, device: str = "auto", intra_op_threads: int = 0,
                 inter_op_threads: int = 0, tf32: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        if inter_op_threads:
            options.inter_op_num_threads = inter_op_threads
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.log_severity_level = 3
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise StartupError("device=cuda but this onnxruntime build has no "
                               "CUDAExecutionProvider (install onnxruntime-gpu)")
        use_cuda = device == "cuda" or (device == "auto" and "CUDAExecutionProvider" in available)
        # TF32 off unless asked: answers then agree with the CPU's to FP32 rounding (TF32 keeps
        # 10 bits of mantissa: 1e-4..1e-3 relative error). HEURISTIC cuDNN convolution search:
        # the default, EXHAUSTIVE, benchmarks every algorithm on each new input shape, and with
        # dynamic batching each batch size is a new shape (resnet18 on an H100: a 4-request
        # batch took hundreds of ms while a new size was searched; docs/runtime-benchmark.md).
        cuda_options = {"use_tf32": "1" if tf32 else "0", "cudnn_conv_algo_search": "HEURISTIC"}
        if use_cuda and not intra_op_threads:
            # with the graph on the GPU, the CPU pool (one spinning thread per core by default)
            # only burns the cores the event loop needs to read the next requests' bodies
            options.intra_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[str | tuple[str, dict[str, str]]] = (
            [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"] if use_cuda
            else ["CPUExecutionProvider"])
        if use_cuda and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu >= 1.21 finds CUDA/cuDNN from the nvidia-* wheels this way
            # (otherwise only after `import torch`, which an ONNX server never does)
            try:
                ort.preload_dlls()
            except Exception as exc:  # best effort: the session will say what is missing
                log.warning("onnxruntime.preload_dlls failed", extra={"fields": {
                    "error": str(exc)}})
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options,
                                                 providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StartupError(f"corrupt or unsupported ONNX model {path.name}: {first}") from None
        self.device = "cuda" if "CUDAExecutionProvider" in self._session.get_providers() else "cpu"
        self.inputs: list[TensorSpec] = [_spec(a) for a in self._session.get_inputs()]
        self.outputs: list[TensorSpec] = [_spec(a) for a in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self._string_inputs = [i.name for i in self.inputs if i.datatype == "BYTES"]
        self._batchable = batch_dim_dynamic(self.inputs) and batch_dim_dynamic(self.outputs)
        log.info("onnx model loaded", extra={"fields": {
            "providers": self._session.get_providers(), "batchable": self._batchable}})

    @property
    def batchable(self) -> bool:
        return self._batchable

    def run(self, inputs: Mapping[str, np.ndarray],
            output_names: Sequence[str] | None) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names else self._output_names
        feeds = dict(inputs)
        for name in self._string_inputs:
            if name in feeds:
                feeds[name] = _as_text(feeds[name], name)
        results = self._session.run(names, feeds)
        return dict(zip(names, results, strict=True))

    def warmup(self) -> None:
        feeds = warmup_inputs(self.inputs)
        if feeds is not None:
            self.run(feeds, None)

    def close(self) -> None:
        del self._session
