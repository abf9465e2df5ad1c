"""The model's shape for the operator's GPU sizing, from ``config.json`` and the safetensors
headers (8-byte length + JSON: each tensor's dtype and shape; no weights are read).

Keys (camelCase, read by the operator): architecture, parameters, weightBytes, numLayers,
hiddenSize, numAttentionHeads, numKeyValueHeads, headDim, maxPositionEmbeddings, dtype, and, for a
model whose layers attend within a sliding window, slidingWindow (the window, in positions) and
slidingWindowLayers (how many layers attend within it)."""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
               "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
               "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I8": "int8", "U8": "uint8"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack")
_MAX_HEADER = 100 << 20

# config.json names across families (GPT-2 style first-generation names after the Llama ones)
_ALIASES = {
    "numLayers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hiddenSize": ("hidden_size", "n_embd", "d_model", "dim"),
    "numAttentionHeads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "numKeyValueHeads": ("num_key_value_heads", "n_kv_heads", "num_kv_heads"),
    "headDim": ("head_dim",),
    "maxPositionEmbeddings": ("max_position_embeddings", "n_positions", "max_seq_len",
                              "seq_length", "n_ctx"),
}


# Families whose every layer attends within config.json's sliding_window when it is set (and
# whose configs carry no layer_types; the LLM engine's loader reads it too). A family not named
# here and without layer_types windows nothing: transformers' Llama, for one, ignores a
# sliding_window its config carries.
EVERY_LAYER_WINDOWED = ("mistral", "mixtral", "phi3", "qwen3_moe")
# Families that window layers by index; transformers derives their layer_types as below when
# config.json has none (configs written before layer_types existed).
_QWEN = ("qwen2", "qwen3")


def sliding_window(config: Mapping[str, Any], layers: int | None) -> tuple[int | None, int]:
    """Pure: (window, how many layers attend within it) as transformers' config classes define
    them, or (None, 0) when no layer is windowed."""
    window = _first_int(config, ("sliding_window",))
    if window is None or window <= 0 or config.get("use_sliding_window") is False:
        return None, 0
    kinds = config.get("layer_types")
    family = config.get("model_type")
    if isinstance(kinds, list) and kinds:
        count = sum(kind == "sliding_attention" for kind in kinds)
    elif layers is None:
        return None, 0
    elif family in _QWEN:  # layers from max_window_layers on (transformers' Qwen2/Qwen3)
        first = _first_int(config, ("max_window_layers",))
        count = layers - min(first, layers) if first is not None else 0
    elif family == "gemma2":  # every other layer, from the first
        count = (layers + 1) // 2
    elif family in ("gemma3", "gemma3_text"):  # all but every sliding_window_pattern-th
        pattern = _first_int(config, ("sliding_window_pattern",)) or 6
        count = layers - layers // pattern if pattern > 0 else layers
    elif family in EVERY_LAYER_WINDOWED:
        count = layers
    else:
        return None, 0
    return (window, count) if count > 0 else (None, 0)


def _first_int(config: Mapping[str, Any], names: Iterable[str]) -> int | None:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def model_shape(config: Mapping[str, Any], tensors: Iterable[tuple[str, list[int]]],
                weight_file_bytes: int | None = None) -> dict[str, Any]:
    """Pure: the shape from a parsed config.json and the (dtype, shape) of every tensor."""
    text = config.get("text_config")
    inner: Mapping[str, Any] = text if isinstance(text, Mapping) else config
    merged = {**config, **inner}
    archs = config.get("architectures")
    out: dict[str, Any] = {
        "architecture": archs[0] if isinstance(archs, list) and archs else
        config.get("model_type")}
    for key, names in _ALIASES.items():
        out[key] = _first_int(merged, names)
    if out["numKeyValueHeads"] is None:
        out["numKeyValueHeads"] = out["numAttentionHeads"]
    window, windowed = sliding_window(merged, out["numLayers"])
    if window is not None:
        out["slidingWindow"], out["slidingWindowLayers"] = window, windowed
    if out["headDim"] is None and out["hiddenSize"] and out["numAttentionHeads"]:
        out["headDim"] = out["hiddenSize"] // out["numAttentionHeads"]
    params, nbytes, kinds = 0, 0, Counter[str]()
    for kind, dims in tensors:
        count = math.prod(dims)
        params += count
        nbytes += count * DTYPE_BYTES.get(kind, 0)
        kinds[kind] += count
    dtype: Any = merged.get("torch_dtype") or merged.get("dtype")
    if not isinstance(dtype, str) and kinds:
        top = kinds.most_common(1)[0][0]
        dtype = DTYPE_NAMES.get(top, top.lower())
    out["parameters"] = params or None
    out["weightBytes"] = nbytes or weight_file_bytes or None
    out["dtype"] = dtype if isinstance(dtype, str) else None
    return out


def safetensors_header(path: Path) -> list[tuple[str, list[int]]]:
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            return []
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER:
            return []
        doc = json.loads(fh.read(length))
    return [(v["dtype"], list(v["shape"])) for k, v in doc.items()
            if k != "__metadata__" and isinstance(v, dict)]


def read_shape(dest: Path, files: Iterable[str]) -> dict[str, Any] | None:
    """The shape of the model in ``dest`` (None when it has no config.json)."""
    names = sorted(files)
    config_name = "config.json" if "config.json" in names else next(
        (n for n in names if n.endswith("/config.json")), None)
    if config_name is None:
        return None
    try:
        config = json.loads((dest / config_name).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    tensors: list[tuple[str, list[int]]] = []
    weight_bytes = 0
    for name in names:
        if name.endswith(".safetensors"):
            # not a readable safetensors file: the weight files' sizes stand in
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                tensors += safetensors_header(dest / name)
        if name.endswith(WEIGHT_SUFFIXES):
            weight_bytes += (dest / name).stat().st_size
    return model_shape(config, tensors, weight_bytes or None)
