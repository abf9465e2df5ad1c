"""sentence-transformers' ``Dense`` modules (LaBSE, sentence-t5, stella, EmbeddingGemma): a
linear projection and its activation applied to the pooled vector, before ``Normalize``, as
sentence-transformers and vLLM apply them. Each module's directory holds ``config.json``
(``in_features``, ``out_features``, ``bias``, ``activation_function``) and its weights
(``model.safetensors``, or ``pytorch_model.bin`` read with ``weights_only``), keys
``linear.weight`` and ``linear.bias``.

The activation's class name is looked up in a fixed list of torch.nn's activations, never
imported: a model directory may not name code to run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import StartupError

# the class names sentence-transformers writes (fullname of the module) -> a constructor
_ACTIVATIONS: dict[str, Callable[[], torch.nn.Module]] = {
    "Identity": torch.nn.Identity, "Tanh": torch.nn.Tanh, "ReLU": torch.nn.ReLU,
    "GELU": torch.nn.GELU, "Sigmoid": torch.nn.Sigmoid, "SiLU": torch.nn.SiLU}


def _activation(name: Any, where: Path) -> torch.nn.Module:
    text = str(name) if name is not None else "torch.nn.modules.activation.Tanh"
    short = text.rsplit(".", 1)[-1]
    if not text.startswith("torch.nn.") or short not in _ACTIVATIONS:
        raise StartupError(f"{where}: activation_function {text!r} is not served; one of "
                           f"torch.nn's {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[short]()


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    safetensors, pickled = directory / "model.safetensors", directory / "pytorch_model.bin"
    try:
        if safetensors.is_file():
            from safetensors.torch import load_file

            return load_file(str(safetensors))
        if pickled.is_file():
            state = torch.load(str(pickled), map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise StartupError(f"{pickled} does not hold a state dict")
            return state
    except StartupError:
        raise
    except Exception as exc:  # a corrupt file: the message says which
        raise StartupError(f"{directory}: the Dense weights cannot be read: {exc}") from None
    raise StartupError(f"{directory} has neither model.safetensors nor pytorch_model.bin")


def _positive(config: dict[str, Any], key: str, where: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise StartupError(f"{where}: {key} must be a positive integer")
    return value


def load_dense(directory: Path, config: dict[str, Any], width: int) -> torch.nn.Sequential:
    """One Dense module as linear + activation (float32, on the CPU), checked against the
    ``width`` of the vector it takes."""
    where = directory / "config.json"
    fan_in, fan_out = _positive(config, "in_features", where), \
        _positive(config, "out_features", where)
    if fan_in != width:
        raise StartupError(f"{where}: in_features {fan_in} is not the width of the vector "
                           f"it takes ({width})")
    if config.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise StartupError(f"{where}: a Dense over {config['module_input_name']!r} is not "
                           "served; only over the pooled sentence_embedding")
    bias = config.get("bias", True)
    if not isinstance(bias, bool):
        raise StartupError(f"{where}: bias must be true or false")
    activation = _activation(config.get("activation_function"), where)
    linear = torch.nn.Linear(fan_in, fan_out, bias=bias)
    state = _weights(directory)
    want = {"linear.weight": (fan_out, fan_in), **({"linear.bias": (fan_out,)} if bias else {})}
    for key, shape in want.items():
        tensor = state.get(key)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else "nothing"
            raise StartupError(f"{directory}: {key} must have the shape {shape}, got {got}")
    with torch.no_grad():
        linear.weight.copy_(state["linear.weight"].float())
        if bias:
            linear.bias.copy_(state["linear.bias"].float())
    return torch.nn.Sequential(linear, activation)
