"""torch backend: TorchScript archives and torch.export programs (.pt2); CUDA when present.

Metadata comes from the model file itself:

* torch.export: names from the graph signature, datatypes and shapes from the placeholders'
  fake tensors (a symbolic dimension is reported as -1). Outputs are ``output__0``, ``output__1``...
* TorchScript: a TorchScript archive does not record shapes, so the runtime reads an optional
  ``kubemaas.json`` extra file inside the archive (``torch.jit.save(m, f, _extra_files=...)``)::

      {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
       "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, 1000]}]}

  Without it, input names come from ``forward``'s signature, datatypes are taken as FP32 and any
  shape is accepted; outputs are ``output__N`` (metadata lists none: they are known only once the
  model runs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInput, StartupError
from .base import DATATYPE_TO_NUMPY, TensorSpec, batch_dim_dynamic, warmup_inputs

log = logging.getLogger("kubemaas.runtime.torch")

_TORCH_TO_DATATYPE: dict[torch.dtype, str] = {
    torch.bool: "BOOL", torch.uint8: "UINT8", torch.int8: "INT8", torch.int16: "INT16",
    torch.int32: "INT32", torch.int64: "INT64", torch.float16: "FP16", torch.float32: "FP32",
    torch.float64: "FP64",
}
METADATA_FILE = "kubemaas.json"


def _specs_from_json(raw: object, what: str) -> list[TensorSpec]:
    if not isinstance(raw, list):
        raise StartupError(f"{METADATA_FILE}: '{what}' must be a list")
    specs = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise StartupError(f"{METADATA_FILE}: each of '{what}' needs a name")
        datatype = item.get("datatype", "FP32")
        if datatype not in DATATYPE_TO_NUMPY or datatype == "BYTES":
            raise StartupError(f"{METADATA_FILE}: unsupported datatype {datatype!r}")
        shape = item.get("shape")
        specs.append(TensorSpec(item["name"], datatype,
                                tuple(int(d) for d in shape) if shape is not None else None))
    return specs


def _shape_of(val: Any) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in val.shape)


# how a torch.export program refuses inputs outside the shapes it was exported for (its range
# constraints, a dimension shared by two inputs): "Guard failed: x.size()[0] <= 1024" (torch
# 2.5 and later), "Expected input at *args[0].shape[0] to be <= 1024, but got 2000" (earlier)
_GUARD_PREFIXES = ("Guard failed:", "Expected input at ")


def input_guard_failure(exc: BaseException) -> str | None:
    """The first line of a torch.export input check's error, or None for any other error."""
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    return first if first.startswith(_GUARD_PREFIXES) else None


class TorchModel:
    def __init__(self, path: Path, fmt: str, *, device: str = "auto", intra_op_threads: int = 0,
                 inter_op_threads: int = 0, tf32: bool = False) -> None:
        if intra_op_threads:
            torch.set_num_threads(intra_op_threads)
        if inter_op_threads:
            try:
                torch.set_num_interop_threads(inter_op_threads)
            except RuntimeError:  # only settable once per process
                log.warning("could not set torch inter-op threads")
        if device == "cuda" and not torch.cuda.is_available():
            raise StartupError("device=cuda but torch sees no CUDA device")
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self._device = torch.device("cuda" if use_cuda else "cpu")
        self.device = self._device.type
        if use_cuda:  # as for onnxruntime: IEEE FP32 unless the user trades precision for speed
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        try:
            if fmt == "torchscript":
                self.platform = "pytorch_torchscript"
                self._load_torchscript(path)
            elif fmt == "torch-export":
                self.platform = "pytorch_export"
                self._load_export(path)
            else:
                raise StartupError(f"unknown torch format {fmt!r}")
        except StartupError:
            raise
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            first = lines[0] if lines else type(exc).__name__
            raise StartupError(f"corrupt or unsupported {fmt} model {path.name}: {first}") \
                from None
        self._input_names = [s.name for s in self.inputs]
        self._batchable = batch_dim_dynamic(self.inputs) and (
            not self.outputs or all(s.shape is None or (s.shape and s.shape[0] == -1)
                                    for s in self.outputs))
        log.info("torch model loaded", extra={"fields": {
            "format": fmt, "device": self.device, "batchable": self._batchable}})

    def _load_torchscript(self, path: Path) -> None:
        extra = {METADATA_FILE: ""}
        module = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location=self._device, _extra_files=extra)
        module.eval()
        self._fn: Any = module
        if extra[METADATA_FILE]:
            meta = json.loads(extra[METADATA_FILE])
            self.inputs = _specs_from_json(meta.get("inputs"), "inputs")
            self.outputs = _specs_from_json(meta.get("outputs", []), "outputs")
        else:
            args = module.forward.schema.arguments[1:]  # drop self
            self.inputs = [TensorSpec(a.name, "FP32", None) for a in args]
            self.outputs = []  # unknown until the model runs: output__0, output__1, ...

    def _load_export(self, path: Path) -> None:
        program = torch.export.load(str(path))
        sig = program.graph_signature
        user_inputs = list(sig.user_inputs)
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        self.inputs = []
        for name in user_inputs:
            val = placeholders[name].meta.get("val")
            if val is None or val.dtype not in _TORCH_TO_DATATYPE:
                raise StartupError(f"torch.export input {name!r} has no tensor metadata")
            self.inputs.append(TensorSpec(name, _TORCH_TO_DATATYPE[val.dtype], _shape_of(val)))
        out_node = next(n for n in program.graph.nodes if n.op == "output")
        vals = [a.meta.get("val") for a in out_node.args[0]]
        user_outputs = list(sig.user_outputs)
        vals = vals[len(vals) - len(user_outputs):]
        self.outputs = [TensorSpec(f"output__{i}", _TORCH_TO_DATATYPE.get(v.dtype, "FP32"),
                                   _shape_of(v)) for i, v in enumerate(vals)]
        module = program.module()
        if self.device != "cpu":
            module = module.to(self._device)
        self._fn = module

    @property
    def batchable(self) -> bool:
        return self._batchable

    def _to_tensor(self, arr: np.ndarray) -> torch.Tensor:
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, copy=True)  # torch.from_numpy wants writable memory
        tensor = torch.from_numpy(arr)
        return tensor.to(self._device, non_blocking=True) if self.device != "cpu" else tensor

    def run(self, inputs: Mapping[str, np.ndarray],
            output_names: Sequence[str] | None) -> dict[str, np.ndarray]:
        args = [self._to_tensor(inputs[name]) for name in self._input_names]
        try:
            with torch.inference_mode():
                result = self._fn(*args)
        except (AssertionError, RuntimeError) as exc:
            reason = input_guard_failure(exc)
            if reason is None:
                raise
            raise InvalidInput(f"the model rejected the input: {reason}") from None
        flat = self._flatten(result)
        if output_names is None:
            return flat
        missing = [n for n in output_names if n not in flat]
        if missing:
            raise InvalidInput(f"the model produced no output {missing[0]!r}; it produced "
                               f"{', '.join(flat)}")
        return {n: flat[n] for n in output_names}

    def _flatten(self, result: Any) -> dict[str, np.ndarray]:
        if isinstance(result, torch.Tensor):
            items: list[tuple[str, Any]] = [("output__0", result)]
        elif isinstance(result, dict):
            items = [(str(k), v) for k, v in result.items()]
        elif isinstance(result, (list, tuple)):
            items = [(f"output__{i}", v) for i, v in enumerate(result)]
        else:
            raise TypeError(f"unsupported model output type {type(result).__name__}")
        names = [s.name for s in self.outputs]
        if names and not isinstance(result, dict) and len(names) == len(items):
            items = [(n, v) for n, (_, v) in zip(names, items, strict=True)]
        return {name: value.detach().cpu().numpy() for name, value in items}

    def warmup(self) -> None:
        feeds = warmup_inputs(self.inputs)
        if feeds is not None:
            self.run(feeds, None)

    def close(self) -> None:
        self._fn = None
