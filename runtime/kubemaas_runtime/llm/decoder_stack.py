"""An engine step through a decoder-only model's own modules, without its top-level forward.

The Llama, Mistral, Qwen2, Qwen3, Phi-3, OLMo 2, Gemma, Gemma 2, Gemma 3 (text) and Granite
models of transformers are one stack: ``embed_tokens``, the rotary embedding, the decoder layers,
the final ``norm``, ``lm_head``. Their top-level forwards (``...ForCausalLM`` around
``...Model``) add work an engine step does not use: output capture, argument checks, attention
masks (the engine's paged attention builds its own), the output dataclasses. ``stack_forward``
calls the same modules in the same order with the same arguments, so the logits are
bit-identical (tests/runtime/test_llm_families.py), and skips the rest: a batch-16 decode step
of the tiny benchmark model 14-18 % shorter (in process, the two forwards alternated 400 times,
three runs), its served throughput at c=16 10 % higher (median of 24 paired points,
docs/llm.md); on the 190 M model the step is the linear layers' and the difference is within
the noise (0.995 and 1.015, 40 alternations).

Where a family's top-level forward does more than that stack, its ``Family`` says what, as the
same arithmetic: Gemma scales the embeddings inside its embedding module (nothing to add);
Gemma 2 and Gemma 3 take the position embeddings as their layers' second argument and soft-cap
the logits (``final_logit_softcapping``); Gemma 3 rotates each layer by its layer type's rotary
base (global or local); Granite multiplies the embeddings (``embedding_multiplier``) and divides
the logits (``logits_scaling``), its residual and attention multipliers are inside its layers.

The mixtures of experts (Mixtral, Qwen3-MoE) are such stacks too (Mixtral's layers take the
position embeddings second) where transformers runs their experts as fixed tensor operations:
its ``grouped_mm`` experts (its default where torch has the kernel) sort the step's tokens by
expert and multiply each group by its expert's slice of one 3-D weight, the routing a tensor,
so a recorded graph of the stack (traced_decode.py, cuda_graphs.py) replays any routing. Its
``eager`` experts loop in Python over the experts a step's routing hit, which a graph would
freeze at the step it recorded: with those (or grouped_mm's fallback, a Python loop too, where
the kernel cannot run), such a model keeps its own forward.

Any other model keeps its own forward: GPT-2's stack has other parts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch

from .attention import STEP_KWARG, PagedStep

StepForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, PagedStep], torch.Tensor]
# (the inner model, the token ids) -> the embeddings
Embed = Callable[[Any, torch.Tensor], torch.Tensor]
# (the inner model, the embeddings, the position ids, the layer count) -> each layer's position
# embeddings
Rotary = Callable[[Any, torch.Tensor, torch.Tensor, int], list[Any]]
# (a layer, hidden states, its position embeddings, the position ids, the step) -> hidden states
CallLayer = Callable[[Any, torch.Tensor, Any, torch.Tensor, PagedStep], torch.Tensor]
# (the model's config, the logits) -> the logits
Head = Callable[[Any, torch.Tensor], torch.Tensor]


def _embed(stack: Any, input_ids: torch.Tensor) -> torch.Tensor:
    return stack.embed_tokens(input_ids)  # type: ignore[no-any-return]


def _granite_embed(stack: Any, input_ids: torch.Tensor) -> torch.Tensor:
    return stack.embed_tokens(input_ids) * stack.embedding_multiplier  # type: ignore[no-any-return]


def _rotary(stack: Any, hidden: torch.Tensor, position_ids: torch.Tensor,
            count: int) -> list[Any]:
    return [stack.rotary_emb(hidden, position_ids=position_ids)] * count


def _rotary_by_layer_type(stack: Any, hidden: torch.Tensor, position_ids: torch.Tensor,
                          count: int) -> list[Any]:
    """Gemma 3: one rotary base per layer type (full attention, sliding window)."""
    types = stack.config.layer_types[:count]
    by_type = {t: stack.rotary_emb(hidden, position_ids, t) for t in set(types)}
    return [by_type[t] for t in types]


def _call_layer(layer: Any, hidden: torch.Tensor, position_embeddings: Any,
                position_ids: torch.Tensor, step: PagedStep) -> torch.Tensor:
    """(hidden_states, attention_mask, position_ids, cache, use_cache, position_embeddings)"""
    return layer(hidden, None, position_ids, step, True,  # type: ignore[no-any-return]
                 position_embeddings, **{STEP_KWARG: step})


def _call_gemma2_layer(layer: Any, hidden: torch.Tensor, position_embeddings: Any,
                       position_ids: torch.Tensor, step: PagedStep) -> torch.Tensor:
    """(hidden_states, position_embeddings, attention_mask, position_ids, cache)"""
    return layer(hidden, position_embeddings, None,  # type: ignore[no-any-return]
                 position_ids, step, **{STEP_KWARG: step})


def _head(config: Any, logits: torch.Tensor) -> torch.Tensor:
    return logits


def _softcapped(config: Any, logits: torch.Tensor) -> torch.Tensor:
    """Gemma 2 and 3: ``cap * tanh(logits / cap)``, as their top-level forwards compute it."""
    cap: float | None = config.final_logit_softcapping
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap


def _granite_head(config: Any, logits: torch.Tensor) -> torch.Tensor:
    scaling: float = config.logits_scaling
    return logits / scaling


@dataclass(frozen=True)
class Family:
    """How a family's top-level forward runs its modules: the decoder layers' leading
    parameters (passed by position: by keyword, transformers' argument wrappers around each
    layer cost ~4 % more of the tiny model's step) and the hooks that call them."""
    layer_params: tuple[str, ...] = ("hidden_states", "attention_mask", "position_ids", "cache",
                                     "use_cache", "position_embeddings")
    embed: Embed = _embed
    rotary: Rotary = _rotary
    call_layer: CallLayer = _call_layer
    head: Head = _head


PLAIN = Family()
GEMMA2 = Family(layer_params=("hidden_states", "position_embeddings", "attention_mask",
                              "position_ids", "cache"),
                call_layer=_call_gemma2_layer, head=_softcapped)
FAMILIES: dict[str, Family] = {
    "llama": PLAIN, "mistral": PLAIN, "qwen2": PLAIN, "qwen3": PLAIN, "phi3": PLAIN,
    "olmo2": PLAIN,
    "gemma": PLAIN,  # (its embedding module scales by sqrt(hidden size))
    "gemma2": GEMMA2,
    "gemma3_text": Family(layer_params=GEMMA2.layer_params, rotary=_rotary_by_layer_type,
                          call_layer=_call_gemma2_layer, head=_softcapped),
    "granite": Family(embed=_granite_embed, head=_granite_head),
    "mixtral": Family(layer_params=GEMMA2.layer_params, call_layer=_call_gemma2_layer),
    "qwen3_moe": PLAIN,
}
# their experts must run as one computation for any routing (experts_in_one_graph)
MIXTURES = ("mixtral", "qwen3_moe")
STACK_FAMILIES = tuple(FAMILIES)
# the plain stack's layer parameters
LAYER_PARAMS = PLAIN.layer_params


def stack_forward(model: Any) -> StepForward | None:
    """The step function over ``model``'s modules, or None when it is not such a stack. The
    modules are looked up at each call, so one replaced after loading is the one that runs."""
    model_type = getattr(model.config, "model_type", None) or ""
    family = FAMILIES.get(model_type)
    if family is None or (model_type in MIXTURES and not experts_in_one_graph(model)):
        return None
    inner: Any = getattr(model, "model", None)
    if not hasattr(model, "lm_head") or any(
            getattr(inner, name, None) is None
            for name in ("embed_tokens", "rotary_emb", "layers", "norm")):
        return None
    layers = list(inner.layers)[:int(model.config.num_hidden_layers)]
    count = len(layers)
    if not layers or any(_leading_params(layer, len(family.layer_params)) != family.layer_params
                         for layer in layers):
        return None
    embed, rotary, call_layer, head = family.embed, family.rotary, family.call_layer, family.head

    def forward(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                step: PagedStep) -> torch.Tensor:
        """The packed tokens ``[1, N]``; the logits of the ``keep`` positions: [K, vocab]."""
        stack = model.model
        hidden = embed(stack, input_ids)
        per_layer = rotary(stack, hidden, position_ids, count)
        # (slicing a ModuleList builds one)
        for layer, position_embeddings in zip(islice(stack.layers, count), per_layer,
                                              strict=True):
            hidden = call_layer(layer, hidden, position_embeddings, position_ids, step)
        return head(model.config, model.lm_head(stack.norm(hidden)[:, keep]))[0]

    return forward


def experts_in_one_graph(model: Any) -> bool:
    """Whether a mixture of experts runs its experts as fixed tensor operations for any
    routing: transformers' ``batched_mm`` experts, or its ``grouped_mm`` ones where torch's
    grouped matrix product takes the model's expert weights (else they fall back to a loop in
    Python over the experts hit)."""
    how = getattr(model.config, "_experts_implementation", None)
    if how == "batched_mm":
        return True
    if how != "grouped_mm":
        return False
    try:
        from transformers.integrations.moe import _can_use_grouped_mm
    except ImportError:  # another transformers: its grouped_mm is not known here
        return False
    experts = [m for m in model.modules() if isinstance(
        getattr(m, "gate_up_proj", None), torch.Tensor) and getattr(m, "num_experts", None)]
    if not experts:
        return False
    weight: torch.Tensor = experts[0].gate_up_proj
    probe = torch.zeros(1, weight.shape[-1], dtype=weight.dtype, device=weight.device)
    offsets = torch.ones(weight.shape[0], dtype=torch.int32, device=weight.device)
    return bool(_can_use_grouped_mm(probe, weight.transpose(-2, -1), offsets))


def _leading_params(layer: Any, count: int) -> tuple[str, ...]:
    names = list(inspect.signature(type(layer).forward).parameters)[1:]  # after self
    return tuple(names[:count])
