"""Keras backend: ``.keras`` archives and legacy ``.h5`` files, run by Keras 3 on its torch
backend (no TensorFlow). Needs the ``keras`` extra (keras, h5py) besides ``torch``.

Before Keras is loaded, the architecture is read from the file (``keras_config``) and a model
with a layer the runtime cannot serve (a custom class, a ``Lambda``) is refused with one line
naming that layer. Metadata comes from the model: an input is named after its ``Input`` layer,
an output after the layer that produces it (as TensorFlow Serving names a Keras model's
signature), datatypes and shapes from the Keras tensors (``None`` is -1).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput, StartupError
from .base import DATATYPE_TO_NUMPY, TensorSpec, batch_dim_dynamic, warmup_inputs
from .keras_config import KerasConfigError, drop_legacy_arguments, find_refusals, read_config

log = logging.getLogger("kubemaas.runtime.keras")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Keras bolds parts of its messages
_DTYPE_TO_DATATYPE = {np.dtype(v).name: k for k, v in DATATYPE_TO_NUMPY.items()
                      if k != "BYTES"}


def _import_keras(device: str) -> Any:
    """Import Keras on the torch backend; it reads KERAS_BACKEND once, at its first import."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    if device == "cpu":
        os.environ.setdefault("KERAS_TORCH_DEVICE", "cpu")
    try:
        import keras
    except ImportError as exc:
        raise StartupError(f"format keras needs the runtime's keras extra (keras, h5py, "
                           f"torch): {exc}") from None
    backend = keras.backend.backend()
    if backend != "torch":
        raise StartupError(f"Keras runs on the {backend} backend here; the runtime needs "
                           "KERAS_BACKEND=torch (unset it or set it to torch)")
    return keras


# where Keras 3 keeps the operations of keras.ops, which a functional model's configuration
# names as layers ({"module": "keras.src.ops.numpy", "class_name": "Sum"}: keras.ops.sum, or
# x * 2.0, x[:, :2] on its tensors)
_OPS_MODULES = ("core", "image", "linalg", "math", "nn", "numpy")


def builtin_classes(keras: Any) -> set[str]:
    """Names of Keras' own layer and model classes, and of its operations (keras.ops)."""
    names = {n for n in dir(keras.layers) if isinstance(getattr(keras.layers, n), type)}
    for module_name in _OPS_MODULES:
        try:
            module = importlib.import_module(f"keras.src.ops.{module_name}")
        except ImportError:  # another Keras layout: its operations are refused, not guessed
            continue
        names |= {n for n, c in vars(module).items()
                  if isinstance(c, type) and issubclass(c, keras.Operation)}
    return names | {"Sequential", "Functional", "Model", "InputLayer"}


def _datatype(dtype: Any, what: str) -> str:
    name = str(getattr(dtype, "name", dtype))
    datatype = _DTYPE_TO_DATATYPE.get(name)
    if datatype is None:
        raise StartupError(f"Keras tensor {what} has dtype {name}, which has no Open Inference "
                           "Protocol datatype")
    return datatype


def _shape(shape: Sequence[int | None]) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in shape)


def _layer_name(tensor: Any, fallback: str) -> str:
    history = getattr(tensor, "_keras_history", None)
    op = getattr(history, "operation", None)
    return str(getattr(op, "name", None) or fallback)


def _unique(names: list[str]) -> list[str]:
    """The names, a repeated one suffixed ``_1``, ``_2`` ... with a suffix no other name has
    (outputs [x, x, x_1]: x, x_2, x_1)."""
    taken = set(names)
    used: set[str] = set()
    out = []
    for name in names:
        unique, n = name, 0
        while unique in used or (unique != name and unique in taken):
            n += 1
            unique = f"{name}_{n}"
        used.add(unique)
        out.append(unique)
    return out


def _named(keras: Any, struct: Any, tensors: Sequence[Any], kind: str,
           ) -> list[tuple[str, Any]]:
    """(name, Keras tensor) in the order the model flattens them. A model built on a dict
    (``keras.Model({"a": ..}, {"score": ..})``) is named by its keys, as TensorFlow Serving
    names the signature of such a model (and tf2onnx a SavedModel's); otherwise an input by its
    ``Input`` layer and an output by the layer that produces it."""
    pairs = ([((), t) for t in tensors] if struct is None
             else keras.tree.flatten_with_path(struct))
    names = []
    for i, (keys, tensor) in enumerate(pairs):
        if len(keys) == 1 and isinstance(keys[0], str):
            names.append(keys[0])
        else:
            names.append(_layer_name(tensor, f"{kind}_{i}"))
    return list(zip(_unique(names), (t for _, t in pairs), strict=True))


def _stateful_layers(model: Any, path: Path) -> list[Any]:
    """The stateful recurrent layers, whose state is reset before every call: without that,
    each answer would depend on the requests (of any client) served before it."""
    layers = [layer for layer in model._flatten_layers(include_self=False)
              if getattr(layer, "stateful", False)]
    for layer in layers:
        if not callable(getattr(layer, "reset_state", None)):
            raise StartupError(f"{path.name}: layer {layer.name!r} is stateful and its state "
                               "cannot be reset between requests")
    return layers


def _lines(exc: Exception) -> list[str]:
    """The non-empty lines of an exception's message, without terminal escapes."""
    return [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()] or [
        type(exc).__name__]


def load_error_reason(exc: Exception) -> str:
    """Keras' reason a model does not load, in one line: a nested deserialization error is
    a chain of "X could not be deserialized ... Exception encountered: <cause>" paragraphs,
    whose last cause is the one that says what is wrong."""
    lines = _lines(exc)
    causes = [ln.removeprefix("Exception encountered:").strip() for ln in lines
              if ln.startswith("Exception encountered:")]
    if causes:
        return causes[-1][:400]
    if lines[0].endswith(":") and len(lines) > 1:  # "... Example error message for <Dense>:"
        return f"{lines[0]} {lines[1]}"[:400]
    return lines[0][:400]


def _unfit(inputs: Mapping[str, np.ndarray]) -> str | None:
    """What makes a request's tensors unfit for one call of a Keras model, whose inputs share
    their first (batch) dimension: an empty dimension, or batch sizes that differ."""
    for name, arr in inputs.items():
        if 0 in arr.shape:
            return f"input {name!r} has an empty dimension: {list(arr.shape)}"
    batches = {name: arr.shape[0] for name, arr in inputs.items() if arr.ndim}
    if len(set(batches.values())) > 1:
        sizes = ", ".join(f"{name!r} {rows}" for name, rows in batches.items())
        return f"the inputs' first (batch) dimensions differ: {sizes}"
    return None


def _model_error(exc: Exception, inputs: Mapping[str, np.ndarray] | None = None) -> Exception:
    """An IndexError raised inside the model comes from the request's values (a token id
    outside an Embedding's range, an empty sequence), and so does any error of a request whose
    tensors are unfit (``_unfit``): a client error with Keras' own reason."""
    unfit = _unfit(inputs) if inputs is not None else None
    if not isinstance(exc, IndexError) and unfit is None:
        return exc
    lines = _lines(exc)
    where = lines[0].removeprefix("Exception encountered when calling ").rstrip(".")
    reason = next((ln for ln in lines[1:] if not ln.startswith(("Arguments", "•"))), "")
    said = f"{where}: {reason}" if reason else where
    why = f" ({unfit})" if unfit else ""
    return InvalidInput(f"the model rejected the input: {said}"[:400] + why[:200])


def _load(keras: Any, path: Path, config: dict[str, Any]) -> Any:
    """keras.saving.load_model; a legacy .h5 whose configuration has Keras 2 arguments is
    loaded from a copy with them dropped (keras_config.drop_legacy_arguments)."""
    try:
        dropped = drop_legacy_arguments(config)
    except KerasConfigError as exc:
        raise StartupError(f"{path.name}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="kubemaas-keras-") as tmp:
        source = path
        if dropped and not zipfile.is_zipfile(path):
            import h5py

            source = Path(tmp, path.name if path.suffix == ".h5" else f"{path.name}.h5")
            shutil.copyfile(path, source)
            with h5py.File(source, "r+") as h5:
                h5.attrs["model_config"] = json.dumps(config)
            log.info("dropped Keras 2 arguments from the legacy .h5 configuration",
                     extra={"fields": {"arguments": dropped}})
        try:
            return keras.saving.load_model(str(source), compile=False, safe_mode=True)
        except Exception as exc:  # Keras raises ValueError/TypeError/... with long messages
            raise StartupError(f"Keras cannot load {path.name}: "
                               f"{load_error_reason(exc)}") from None


class KerasModel:
    platform = "keras"

    def __init__(self, path: Path, *, device: str = "auto", intra_op_threads: int = 0,
                 inter_op_threads: int = 0, tf32: bool = False) -> None:
        try:
            config = read_config(path)
        except KerasConfigError as exc:
            raise StartupError(str(exc)) from None
        keras = _import_keras(device)
        import torch

        refusals = find_refusals(config, builtin_classes(keras))
        if refusals:
            more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
            raise StartupError(f"{path.name}: {refusals[0].message()}{more}")
        if intra_op_threads:
            torch.set_num_threads(intra_op_threads)
        if inter_op_threads:
            try:
                torch.set_num_interop_threads(inter_op_threads)
            except RuntimeError:
                log.warning("could not set torch inter-op threads")
        if device == "cuda" and not torch.cuda.is_available():
            raise StartupError("device=cuda but torch sees no CUDA device")
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        model = _load(keras, path, config)
        if getattr(model, "inputs", None) is None:  # Keras: an AttributeError, not None
            raise StartupError(f"{path.name}: the model was saved before it was built (a "
                               "Sequential without keras.Input, never called or trained): its "
                               "inputs are unknown; add keras.Input(shape) first, or call "
                               "model.build(shape), and save it again")
        self._model = model
        self._torch = torch
        self._tree = keras.tree
        weights = list(model.weights)
        self.device = weights[0].value.device.type if weights else "cpu"
        # the structures the model was built with (a dict, a list, one tensor); Sequential
        # models have none: one input, one output
        self._in_struct = getattr(model, "_inputs_struct", None)
        self._out_struct = getattr(model, "_outputs_struct", None)
        self.inputs = [TensorSpec(n, _datatype(t.dtype, n), _shape(t.shape)) for n, t in
                       _named(keras, self._in_struct, model.inputs, "input")]
        self.outputs = [TensorSpec(n, _datatype(t.dtype, n), _shape(t.shape)) for n, t in
                        _named(keras, self._out_struct, model.outputs, "output")]
        self._stateful = _stateful_layers(model, path)
        self._state_lock = threading.Lock()
        self._input_names = [s.name for s in self.inputs]
        self._batchable = batch_dim_dynamic(self.inputs) and batch_dim_dynamic(self.outputs)
        log.info("keras model loaded", extra={"fields": {
            "backend": "torch", "device": self.device, "layers": len(model.layers),
            "batchable": self._batchable}})

    @property
    def batchable(self) -> bool:
        return self._batchable

    def _tensor(self, arr: np.ndarray) -> Any:
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, copy=True)  # torch.from_numpy wants writable memory
        tensor = self._torch.from_numpy(arr)
        return tensor.to(self.device) if self.device != "cpu" else tensor

    def run(self, inputs: Mapping[str, np.ndarray],
            output_names: Sequence[str] | None) -> dict[str, np.ndarray]:
        args = [self._tensor(inputs[name]) for name in self._input_names]
        feed = (args[0] if self._in_struct is None
                else self._tree.pack_sequence_as(self._in_struct, args))
        # a stateful layer's state lives in the model: calls of --instances threads must not
        # overlap (one's reset between another's read and write of it)
        guard = self._state_lock if self._stateful else contextlib.nullcontext()
        try:
            with self._torch.inference_mode(), guard:
                for layer in self._stateful:
                    layer.reset_state()
                result = self._model(feed, training=False)
        except Exception as exc:  # re-raised, as a client error when it is one
            raise _model_error(exc, inputs) from None
        flat = self._tree.flatten(result)
        if len(flat) != len(self.outputs):
            raise InvalidInput(f"the model produced {len(flat)} outputs, its metadata lists "
                               f"{len(self.outputs)}")
        out = {spec.name: value.detach().cpu().numpy()
               for spec, value in zip(self.outputs, flat, strict=True)}
        if output_names is None:
            return out
        missing = [n for n in output_names if n not in out]
        if missing:
            raise InvalidInput(f"the model has no output {missing[0]!r}; it has "
                               f"{', '.join(out)}")
        return {n: out[n] for n in output_names}

    def warmup(self) -> None:
        feeds = warmup_inputs(self.inputs)
        if feeds is not None:
            self.run(feeds, None)

    def close(self) -> None:
        self._model = None
