"""A language model directory the optimize step quantized (``spec.model.optimize`` on an ``hf``
model): the original's files plus ``kubemaas-optimize.json``, ``{"quantize": "bf16"}`` or
``{"quantize": "int8-weight-only"}``, which the loader applies (loader.py):

- ``bf16``: the weights are loaded as bfloat16 (whatever ``--dtype`` says: the figures the
  optimize step measured are those of bfloat16).
- ``int8-weight-only``: after loading, torchao's ``quantize_`` with ``Int8WeightOnlyConfig``
  turns the weight of every ``nn.Linear`` into int8 with one scale per output channel (the
  output head too, unless it shares its weight with the token embedding).

Why applied at load, not saved quantized: the loader takes only safetensors (memory-mapped, no
code runs), and torchao's int8 tensors are saved by pickling; quantizing a loaded model's
weights is deterministic and takes well under a second for the models that fit a CPU node, so
the model that serves is exactly the one the optimize step measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import StartupError

MARKER = "kubemaas-optimize.json"
LLM_QUANTIZE = ("int8-weight-only", "bf16")


def read_marker(path: Path) -> str | None:
    """The quantize option the directory was optimized with, or None."""
    marker = path / MARKER
    if not marker.is_file():
        return None
    try:
        value = json.loads(marker.read_text()).get("quantize")
    except (ValueError, AttributeError) as exc:
        raise StartupError(f"{marker} is not a JSON object: {exc}") from None
    if value not in LLM_QUANTIZE:
        raise StartupError(f"{marker}: quantize {value!r} is not one of {', '.join(LLM_QUANTIZE)}")
    return str(value)


def write_marker(path: Path, quantize: str) -> None:
    (path / MARKER).write_text(json.dumps({"quantize": quantize}) + "\n")


def int8_weight_only(model: Any) -> int:
    """Quantize the linear weights in place (torchao); returns how many layers."""
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    head = model.get_output_embeddings() if tied else None
    count = 0

    def linear(module: Any, fqn: str) -> bool:
        nonlocal count
        take = isinstance(module, torch.nn.Linear) and module is not head
        count += take
        return take

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=linear)
    return count


def weight_bytes(model: Any) -> int:
    """Bytes the model's parameters and buffers take (an int8 tensor: its values and scales)."""
    total = 0
    seen: set[int] = set()
    for tensor in (*model.parameters(), *model.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        flatten = getattr(tensor, "__tensor_flatten__", None)
        parts = [getattr(tensor, n) for n in flatten()[0]] if flatten is not None else [tensor]
        total += sum(p.numel() * p.element_size() for p in parts)
    return total
