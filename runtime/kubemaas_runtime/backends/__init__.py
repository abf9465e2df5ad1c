"""Model backends behind one protocol (``base.Model``). Imports are lazy: serving an ONNX model
never imports torch."""

from __future__ import annotations

from pathlib import Path

from .base import Model, TensorSpec

__all__ = ["Model", "TensorSpec", "load_model"]


def load_model(path: Path, fmt: str, *, device: str = "auto", intra_op_threads: int = 0,
               inter_op_threads: int = 0, tf32: bool = False) -> Model:
    """Load a model file of the given format (onnx | torchscript | torch-export | keras)."""
    if fmt == "keras":
        from .keras import KerasModel

        return KerasModel(path, device=device, intra_op_threads=intra_op_threads,
                          inter_op_threads=inter_op_threads, tf32=tf32)
    if fmt == "onnx":
        from .onnx import OnnxModel

        return OnnxModel(path, device=device, intra_op_threads=intra_op_threads,
                         inter_op_threads=inter_op_threads, tf32=tf32)
    from .torch import TorchModel

    return TorchModel(path, fmt, device=device, intra_op_threads=intra_op_threads,
                      inter_op_threads=inter_op_threads, tf32=tf32)
