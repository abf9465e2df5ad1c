"""The transformations, each done by the well-kept tool for its format (see docs/optimize.md).

- ``int8-dynamic``: ``onnxruntime.quantization.quantize_dynamic`` (weights int8, activations
  quantized at run time per batch: no calibration data needed), after onnxruntime's
  ``quant_pre_process`` (shape inference and graph optimization, which the quantizer expects).
- ``int8-static``: ``onnxruntime.quantization.quantize_static`` in the QDQ format, calibrated
  on generated rows (a different seed from the probe rows it is then measured on).
- ``fp16``: onnxconverter-common's float16 converter with ``keep_io_types`` so that the model's
  inputs and outputs stay FP32 and clients are unchanged.
- ``convert: onnx``: ``torch.onnx.export`` (the TorchScript-based exporter: it needs no
  onnxscript) of the TorchScript module or of the torch.export program's module, with the
  runtime's own input and output names and a dynamic batch axis, so that the served interface
  does not change.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.base import DATATYPE_TO_NUMPY, TensorSpec
from ..errors import StartupError

log = logging.getLogger("kubemaas.runtime.optimize")

QUANTIZE = ("int8-dynamic", "int8-static", "fp16")
CALIBRATION_SEED = 1  # calibration rows differ from the probe rows the result is measured on
CONVERT = ("onnx",)
OPSET = 17


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def quantize_int8_dynamic(src: Path, dest: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dest.with_name(dest.stem + ".pre.onnx")
    try:
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            source = pre
        except Exception as exc:  # pre-processing is an aid; quantize the model as it is
            log.warning("quant_pre_process failed; quantizing without it",
                        extra={"fields": {"error": _first_line(exc)}})
            source = src
        quantize_dynamic(str(source), str(dest), weight_type=QuantType.QInt8)
    except Exception as exc:
        raise StartupError(f"int8-dynamic quantization failed: {_first_line(exc)}") from None
    finally:
        pre.unlink(missing_ok=True)


def quantize_int8_static(src: Path, dest: Path, calibration: Mapping[str, np.ndarray],
                         batch: int) -> None:
    """Static int8 in the QDQ format (activations uint8, weights int8 per channel), with
    activation ranges calibrated (min-max) on ``calibration`` rows fed ``batch`` at a time.
    onnxruntime fuses QDQ pairs around Conv and MatMul into its integer kernels, which is what
    makes convolutional networks faster on CPU (``int8-dynamic`` quantizes activations at run
    time and its ConvInteger kernel is slow)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    total = len(next(iter(calibration.values())))
    chunks = [{k: v[i:i + batch] for k, v in calibration.items()}
              for i in range(0, total, batch)]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(chunks)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    pre = dest.with_name(dest.stem + ".pre.onnx")
    try:
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            source = pre
        except Exception as exc:
            log.warning("quant_pre_process failed; quantizing without it",
                        extra={"fields": {"error": _first_line(exc)}})
            source = src
        quantize_static(str(source), str(dest), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True)
    except Exception as exc:
        raise StartupError(f"int8-static quantization failed: {_first_line(exc)}") from None
    finally:
        pre.unlink(missing_ok=True)


def to_fp16(src: Path, dest: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    try:
        model = onnx.load(str(src))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "the value is out of fp16 range": clamped, measured
            half = float16.convert_float_to_float16(model, keep_io_types=True)
        onnx.save(half, str(dest))
    except Exception as exc:
        raise StartupError(f"fp16 conversion failed: {_first_line(exc)}") from None


def _example(specs: list[TensorSpec]) -> tuple[Any, ...]:
    import torch

    tensors = []
    for spec in specs:
        if spec.shape is None:
            raise StartupError(f"input {spec.name!r} has no known shape; converting to ONNX "
                               "needs the input shapes (TorchScript: kubemaas.json metadata)")
        shape = tuple(2 if d < 0 else d for d in spec.shape)  # 2: keeps the batch axis symbolic
        dtype = DATATYPE_TO_NUMPY[spec.datatype]
        tensors.append(torch.from_numpy(np.zeros(shape, dtype=dtype)))
    return tuple(tensors)


def _unregistered(inner: Any) -> Any:
    """A plain module calling ``inner`` without registering it as a child: the exporter calls
    ``train(False)``, which a torch.export program's module refuses (it is already in inference
    form)."""
    import torch

    for param in inner.parameters():  # constants of the traced graph: no gradients
        param.requires_grad_(False)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._inner = [inner]  # a list: not a registered submodule

        def forward(self, *args: Any) -> Any:
            return self._inner[0](*args)

    return Wrapper()


def torch_to_onnx(src: Path, fmt: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                  dest: Path) -> None:
    """Export a TorchScript (``torchscript``) or torch.export (``torch-export``) model."""
    import torch

    try:
        if fmt == "torchscript":
            module: Any = torch.jit.load(str(src), map_location="cpu")  # type: ignore[no-untyped-call]
            module.eval()
        elif fmt == "torch-export":
            module = _unregistered(torch.export.load(str(src)).module())
        else:
            raise StartupError(f"convert: onnx takes torchscript or torch-export, not {fmt}")
        in_names = [s.name for s in inputs]
        out_names = [s.name for s in outputs] or ["output__0"]
        axes: dict[str, dict[int, str]] = {}
        for spec in (*inputs, *outputs):
            if spec.shape and spec.shape[0] == -1:
                axes[spec.name] = {0: "batch"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated
            torch.onnx.export(module, _example(inputs), str(dest), input_names=in_names,
                              output_names=out_names, dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False)
    except StartupError:
        raise
    except Exception as exc:
        raise StartupError(f"torch.onnx.export of the {fmt} model failed: "
                           f"{_first_line(exc)}") from None
