"""Optimize torch models without going through ONNX (see docs/optimize.md).

- ``bf16``: torch's own ``Module.to(torch.bfloat16)`` of the TorchScript module or the
  torch.export program's module, behind a wrapper that casts floating inputs to bfloat16 and
  floating outputs back to float32 so that clients are unchanged; saved again in the model's own
  format (``torch.jit.trace`` of the wrapper, keeping the archive's ``kubemaas.json`` metadata; or
  ``torch.export.export`` with the batch axis dynamic).
- ``int8-weight-only``: torchao's ``quantize_`` with ``Int8WeightOnlyConfig`` (int8 weights, one
  scale per output channel, dequantized in the matmul) on the weights of the program's linear
  layers, then exported again. The exported graph calls ``aten.linear`` directly, below the
  ``torch.nn.functional.linear`` hook where torchao's int8 tensor takes over, so those calls are
  pointed back at ``F.linear`` first (the only change made to the graph). TorchScript modules
  cannot hold torchao's tensors: ``int8-weight-only`` takes torch-export models (or ``hf``
  language models, llm_quant.py); a TorchScript model can use ``convert: onnx`` with
  ``int8-dynamic``. A program saved this way needs torchao to load (the runtime's torch extra has
  it).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..backends.base import TensorSpec
from ..errors import StartupError
from .transform import _example, _first_line

TORCH_QUANTIZE = ("int8-weight-only", "bf16")
METADATA_FILE = "kubemaas.json"


def _cast_wrapper(inner: Any, dtype: Any, names: list[str]) -> Any:
    """``inner`` (cast to ``dtype``) behind floating-input and -output casts; its ``forward``
    announces the parameters ``names`` (what torch.export names the program's inputs after)."""
    import inspect

    import torch
    from torch.utils._pytree import tree_map

    def to(kind: Any) -> Any:
        return lambda t: t.to(kind) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    class CastIO(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner.to(dtype)

        def forward(self, *args: Any) -> Any:
            return tree_map(to(torch.float32), self.inner(*tree_map(to(dtype), args)))

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    CastIO.forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, kind) for n in ("self", *names)])

    return CastIO()  # no .eval(): a torch.export module refuses train(False); inner is already


def _dynamic_batch(inputs: list[TensorSpec]) -> tuple[Any, ...]:
    from torch.export import Dim

    batch = Dim.AUTO  # dynamic within whatever range the original program allows
    return tuple({0: batch} if s.shape and s.shape[0] == -1 else None for s in inputs)


def _export(module: Any, inputs: list[TensorSpec], dest: Path) -> None:
    """``torch.export`` with the batch axis dynamic."""
    import torch

    program = torch.export.export(module, _example(inputs), dynamic_shapes=_dynamic_batch(inputs))
    torch.export.save(program, str(dest))


def to_bf16(src: Path, fmt: str, inputs: list[TensorSpec], dest: Path) -> None:
    import torch

    try:
        if fmt == "torchscript":
            extra = {METADATA_FILE: ""}
            inner = torch.jit.load(str(src), map_location="cpu",  # type: ignore[no-untyped-call]
                                   _extra_files=extra)
            wrapped = _cast_wrapper(inner.eval(), torch.bfloat16, [s.name for s in inputs])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings: the casts do not depend on data
                traced = torch.jit.trace(wrapped, _example(inputs),  # type: ignore[no-untyped-call]
                                         check_trace=False)
            torch.jit.save(traced, str(dest),
                           _extra_files={METADATA_FILE: extra[METADATA_FILE]}
                           if extra[METADATA_FILE] else None)
        elif fmt == "torch-export":
            module = torch.export.load(str(src)).module()
            _export(_cast_wrapper(module, torch.bfloat16, [s.name for s in inputs]), inputs, dest)
        else:
            raise StartupError(f"bf16 takes a torchscript or torch-export model, not {fmt}")
    except StartupError:
        raise
    except Exception as exc:
        raise StartupError(f"bf16 conversion of the {fmt} model failed: "
                           f"{_first_line(exc)}") from None


def _linear_weights(module: Any) -> set[str]:
    """Names of the parameters an exported graph uses as the weight of ``aten.linear``, which
    are pointed at ``F.linear`` on the way (see the module docstring)."""
    import torch

    names: set[str] = set()
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.linear.default:
            node.target = torch.nn.functional.linear
            weight = node.args[1]
            if getattr(weight, "op", None) == "get_attr":
                names.add(str(weight.target))
    module.recompile()
    return names


def int8_weight_only(src: Path, fmt: str, inputs: list[TensorSpec], dest: Path) -> int:
    """Quantize the linear weights of a torch-export program; returns how many it quantized."""
    import torch

    if fmt != "torch-export":
        raise StartupError(f"int8-weight-only takes a torch-export model, not {fmt} (TorchScript "
                           "cannot hold torchao's int8 tensors: use convert onnx with "
                           "int8-dynamic)")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        module = torch.export.load(str(src)).module()
        wanted = _linear_weights(module)

        def is_linear(mod: Any, fqn: str) -> bool:
            return f"{fqn}.weight" in wanted if fqn else "weight" in wanted

        quantize_(module, Int8WeightOnlyConfig(), filter_fn=is_linear)
        if not wanted:
            raise StartupError("the model has no linear layer to quantize")
        _export(module, inputs, dest)
    except StartupError:
        raise
    except Exception as exc:
        raise StartupError(f"int8-weight-only quantization of the {fmt} model failed: "
                           f"{_first_line(exc)}") from None
    return len(wanted)
