"""``longrope`` models (Phi-3's and Phi-3.5's long-context checkpoints): one set of rotary
frequencies for every position of every sequence.

transformers switches a longrope model's frequencies at each forward: the long factors for
every position once the forward's longest sequence passes ``original_max_position_embeddings``,
the short ones otherwise. In a batched, chunked engine that would make one prompt's answer
depend on the other sequences of its batch and on where its prefill was cut. vLLM fixes the
set once, from the served length: the long factors where ``max_model_len`` passes the original
length, else the short ones. kubemaas does the same (``pin``), so the whole of a model's
``max_position_embeddings`` can be served.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("kubemaas.llm")

# the rope_type a pinned module answers to: transformers' dynamic_rope_update then leaves
# its frequencies alone ("dynamic" is not in it, and it is not "longrope")
PINNED = "longrope-pinned"


def original_length(cfg: Any) -> int | None:
    """A ``longrope`` model's ``original_max_position_embeddings``, else None."""
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    if not isinstance(params, dict):
        return None
    found = [p for p in (params, *params.values()) if isinstance(p, dict) and
             p.get("rope_type", p.get("type")) == "longrope"]
    if not found:
        return None
    originals = [p.get("original_max_position_embeddings") or
                 getattr(cfg, "original_max_position_embeddings", None) for p in found]
    return min(int(o) for o in originals if o) if any(originals) else None


def pin(model: torch.nn.Module, max_model_len: int) -> str | None:
    """Fix the rotary frequencies of a longrope ``model`` for serving ``max_model_len``
    positions: "long" or "short", the set chosen; None for a model without longrope."""
    original = original_length(model.config)
    if original is None:
        return None
    use_long = max_model_len > original
    for found in model.modules():
        module: Any = found  # a rotary embedding: its rope_type is a plain attribute
        types = getattr(module, "rope_type", None)
        if types == "longrope":
            _pin_set(module, None, use_long)
            module.rope_type = PINNED
        elif isinstance(types, dict) and "longrope" in types.values():
            for layer_type, rope_type in types.items():
                if rope_type == "longrope":
                    _pin_set(module, layer_type, use_long)
            module.rope_type = {k: PINNED if v == "longrope" else v for k, v in types.items()}
    chosen = "long" if use_long else "short"
    log.info("longrope: the %s factors for every position (max-model-len %d, original "
             "length %d)", chosen, max_model_len, original)
    return chosen


def _pin_set(module: Any, layer_type: str | None, use_long: bool) -> None:
    """Copy the chosen frequencies into the module's ``inv_freq`` buffer, in place (a CUDA
    graph or a recorded decode graph reads that buffer's address)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    prefix = f"{layer_type}_" if layer_type is not None else ""
    target: torch.Tensor = getattr(module, f"{prefix}inv_freq")
    if use_long:
        params = module.config.rope_parameters
        original = (params if layer_type is None else params[layer_type])[
            "original_max_position_embeddings"]
        chosen, _ = ROPE_INIT_FUNCTIONS["longrope"](
            module.config, target.device, seq_len=int(original) + 1, layer_type=layer_type)
    else:
        chosen = getattr(module, f"{prefix}original_inv_freq")
    target.copy_(chosen.to(device=target.device, dtype=target.dtype))
