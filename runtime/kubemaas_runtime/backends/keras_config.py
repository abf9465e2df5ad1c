"""PURE: read a Keras model file's architecture (no Keras import) and find the layers the runtime
cannot serve, so that such a model is refused at start with one line naming the layer.

A ``.keras`` file is a zip archive holding ``config.json``; a legacy ``.h5`` file (Keras 2's
``tf.keras`` or Keras 3) keeps the same JSON in the root group's ``model_config`` attribute.
What is refused:

* a layer whose class is not a built-in Keras layer (a custom class: its Python code is not in
  the model file, and the runtime does not import user code);
* ``Lambda`` layers: they hold marshalled Python bytecode, which the runtime does not execute;
* ``TFSMLayer`` and other layers that wrap TensorFlow graphs: there is no TensorFlow here;
* the layers Keras 3 runs only on TensorFlow (``TextVectorization``, ``StringLookup``, ...) and
  string inputs: Keras on torch has no string tensors (a SavedModel of the model serves them).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Iterator, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Layers with a reason of their own (everything else unknown is "not a built-in Keras layer").
REFUSED = {
    "Lambda": "Lambda layers hold Python bytecode, which the runtime does not execute; "
              "rewrite the function as built-in layers",
    "TFSMLayer": "it wraps a TensorFlow SavedModel and the runtime has no TensorFlow; "
                 "deploy the SavedModel itself with format tf-savedmodel",
    "TorchModuleWrapper": "it pickles a torch module, which the runtime does not unpickle",
}
# tf.keras (Keras 2) writes a TensorFlow function applied to a Keras tensor (x * 2, x[:, :3],
# tf.reduce_sum(x)) as one of these: Keras 3 has no such layers and there is no TensorFlow here
_TF_OP = ("it is a TensorFlow function that tf.keras applied to a Keras tensor; Keras 3 cannot "
          "run it without TensorFlow: save the model as a SavedModel and deploy it with format "
          "tf-savedmodel, or rebuild it with Keras layers or keras.ops")
REFUSED.update({"TFOpLambda": _TF_OP, "SlicingOpLambda": _TF_OP})
# Keras 3 runs these only on TensorFlow (string tensors, lookup tables): on the torch backend
# Keras' own error ends "Install it via `pip install tensorflow`", which no runtime user can do
_TF_ONLY = ("it runs only on TensorFlow (string tensors and lookup tables), and the runtime's "
            "Keras runs on torch: export the model as a SavedModel (model.export(DIR)) and deploy "
            "it with format tf-savedmodel, where a string input is a BYTES tensor (tf2onnx "
            "converts StringLookup, not TextVectorization's regex and split ops)")
REFUSED.update(dict.fromkeys(("TextVectorization", "StringLookup", "IntegerLookup", "Hashing",
                              "HashedCrossing"), _TF_ONLY))
_STRING_INPUT = ("a string input: Keras on torch has no string tensors; export the model as a "
                 "SavedModel (model.export(DIR)) and deploy it with format tf-savedmodel, "
                 "where a string input is a BYTES tensor")
# Model containers: their sub-layers are checked, not the container itself.
CONTAINERS = {"Sequential", "Functional", "Model"}


# Keras 2 (tf.keras) arguments that Keras 3 no longer takes, by layer class: dropped from a
# legacy .h5 file's configuration before it loads (their Keras 2 default is the only behaviour
# Keras 3 has). Measured: a tf.keras LSTM saved as .h5 fails in Keras 3 on ``time_major``.
LEGACY_DROPPED: dict[str, dict[str, object]] = {
    cls: {"time_major": False} for cls in ("LSTM", "GRU", "SimpleRNN", "RNN", "ConvLSTM1D",
                                           "ConvLSTM2D", "ConvLSTM3D")}


# config.json is read whole before Keras loads the model (which guards its own reads): a
# configuration is kilobytes, a few MB for a model of thousands of layers
MAX_CONFIG_BYTES = 64 << 20


class KerasConfigError(ValueError):
    """The file is not a readable Keras model (the message is one line)."""


@dataclass(frozen=True)
class Refusal:
    layer: str  # the layer's name in the model
    class_name: str
    reason: str

    def message(self) -> str:
        return (f"cannot serve layer {self.layer!r} (class {self.class_name}): {self.reason}")


def read_config(path: Path) -> dict[str, Any]:
    """The model's architecture as JSON, from a .keras archive or an .h5 file."""
    if zipfile.is_zipfile(path):
        raw: str | bytes = _zip_config(path)
    else:
        raw = _h5_config(path)
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise KerasConfigError(f"{path.name}: the model configuration is not JSON: "
                               f"{exc}") from None
    if not isinstance(doc, dict):
        raise KerasConfigError(f"{path.name}: the model configuration is not an object")
    return doc


def _zip_config(path: Path) -> bytes:
    try:
        with zipfile.ZipFile(path) as archive:
            size = archive.getinfo("config.json").file_size
            if size > MAX_CONFIG_BYTES:
                raise KerasConfigError(f"{path.name}: its config.json unpacks to {size} bytes, "
                                       f"more than a model configuration ({MAX_CONFIG_BYTES})")
            return archive.read("config.json")
    except KerasConfigError:
        raise
    except KeyError:
        raise KerasConfigError(f"{path.name} is a zip archive without config.json; "
                               "not a .keras model file") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise KerasConfigError(f"{path.name}: a damaged .keras archive: {exc}") from None


def _h5_config(path: Path) -> str | bytes:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("model_config")
    except OSError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KerasConfigError(f"{path.name} is neither a .keras archive nor an HDF5 "
                               f"file: {first}") from None
    if raw is None:
        raise KerasConfigError(f"{path.name} holds weights only (no model_config); save the "
                               "whole model with model.save(), not save_weights()")
    return raw if isinstance(raw, (str, bytes)) else str(raw)


def iter_layers(node: Any) -> Iterator[dict[str, Any]]:
    """Every layer configuration in the tree (nested models included), depth first."""
    if not (isinstance(node, dict) and isinstance(node.get("class_name"), str)
            and isinstance(node.get("config"), dict)):
        return
    yield node
    config = node["config"]
    children: list[Any] = []
    for key in ("layers", "cells"):  # models; StackedRNNCells
        if isinstance(config.get(key), list):
            children.extend(config[key])
    # Bidirectional, TimeDistributed, RNN(cell)
    children.extend(config.get(k) for k in ("layer", "forward_layer", "backward_layer", "cell"))
    for child in children:
        yield from iter_layers(child)


def find_refusals(config: dict[str, Any], builtin: Set[str]) -> list[Refusal]:
    """The layers that cannot be served: classes outside ``builtin`` (Keras' own layer and
    model classes) or in ``REFUSED``. A custom class registered under a package name
    (``registered_name`` "pkg>Name") is custom even when its class name matches a built-in."""
    found = []
    for layer in iter_layers(config):
        cls = layer["class_name"]
        name = str(layer["config"].get("name", "?"))
        registered = layer.get("registered_name")
        module = layer.get("module")
        custom = (isinstance(registered, str) and registered != cls
                  and not registered.startswith("keras"))
        foreign = isinstance(module, str) and not module.startswith("keras")
        if cls in REFUSED:
            found.append(Refusal(name, cls, REFUSED[cls]))
        elif cls == "InputLayer" and layer["config"].get("dtype") == "string":
            found.append(Refusal(name, cls, _STRING_INPUT))
        elif cls in CONTAINERS and not custom:
            continue
        elif custom or foreign or cls not in builtin:
            where = f" from module {module}" if foreign else ""
            found.append(Refusal(name, str(registered) if custom else cls,
                                 f"not a built-in Keras layer{where}; the runtime serves "
                                 "built-in layers only (custom layer code is not loaded)"))
    return found


def drop_legacy_arguments(config: dict[str, Any]) -> list[str]:
    """Remove, in place, the Keras 2 arguments of ``LEGACY_DROPPED`` that hold their default
    (the only behaviour Keras 3 has). Returns "layer.argument" for each one removed; raises
    KerasConfigError for one set to anything else (the model cannot run the same way)."""
    dropped = []
    for layer in iter_layers(config):
        for arg, default in LEGACY_DROPPED.get(layer["class_name"], {}).items():
            if arg not in layer["config"]:
                continue
            name = str(layer["config"].get("name", "?"))
            value = layer["config"].pop(arg)
            if value != default:
                raise KerasConfigError(f"layer {name!r} ({layer['class_name']}) sets {arg}="
                                       f"{value!r}, which Keras 3 cannot run")
            dropped.append(f"{name}.{arg}")
    return dropped
