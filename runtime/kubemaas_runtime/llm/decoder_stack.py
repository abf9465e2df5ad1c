"""An engine step through a decoder-only model's own modules, without its top-level forward.

The Llama, Mistral, Qwen2, Qwen3, Phi-3 and OLMo 2 models of transformers are one stack:
``embed_tokens``, the rotary embedding, the decoder layers, the final ``norm``, ``lm_head``.
Their top-level forwards (``...ForCausalLM`` around ``...Model``) add work an engine step does
not use: output capture, argument checks, attention masks (the engine's paged attention builds
its own), the output dataclasses. ``stack_forward`` calls the same modules in the same order
with the same arguments, so the logits are bit-identical (tests/runtime/test_llm_families.py),
and skips the rest: a batch-16 decode step of the tiny benchmark model 14-18 % shorter (in
process, the two forwards alternated 400 times, three runs), its served throughput at c=16 10 %
higher (median of 24 paired points, docs/llm.md); on the 190 M model the step is the linear
layers' and the difference is within the noise (0.995 and 1.015, 40 alternations).

Any other model keeps its own forward: GPT-2's stack has other parts; Gemma's, Gemma 2's, Gemma
3's and Granite's top-level forwards scale the embeddings or the logits; the mixture-of-experts
families (Mixtral, Qwen3-MoE) pick the experts a step runs in Python from the routing's values,
which a graph of the stack (traced_decode.py, cuda_graphs.py) would freeze at the step it
recorded.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from itertools import islice
from typing import Any

import torch

from .attention import STEP_KWARG, PagedStep

STACK_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2")
# a decoder layer's leading parameters, passed by position (by keyword, transformers' argument
# wrappers around each layer cost ~4 % more of the tiny model's step)
LAYER_PARAMS = ("hidden_states", "attention_mask", "position_ids", "cache", "use_cache",
                "position_embeddings")

StepForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, PagedStep], torch.Tensor]


def stack_forward(model: Any) -> StepForward | None:
    """The step function over ``model``'s modules, or None when it is not such a stack. The
    modules are looked up at each call, so one replaced after loading is the one that runs."""
    if getattr(model.config, "model_type", None) not in STACK_FAMILIES:
        return None
    inner: Any = getattr(model, "model", None)
    if not hasattr(model, "lm_head") or any(
            getattr(inner, name, None) is None
            for name in ("embed_tokens", "rotary_emb", "layers", "norm")):
        return None
    count = int(model.config.num_hidden_layers)
    layers = list(inner.layers)[:count]
    if not layers or any(_leading_params(layer) != LAYER_PARAMS for layer in layers):
        return None

    def forward(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                step: PagedStep) -> torch.Tensor:
        """The packed tokens ``[1, N]``; the logits of the ``keep`` positions: [K, vocab]."""
        stack = model.model
        hidden = stack.embed_tokens(input_ids)
        position_embeddings = stack.rotary_emb(hidden, position_ids=position_ids)
        for layer in islice(stack.layers, count):  # (slicing a ModuleList builds one)
            hidden = layer(hidden, None, position_ids, step, True, position_embeddings,
                           **{STEP_KWARG: step})
        return model.lm_head(stack.norm(hidden)[:, keep])[0]  # type: ignore[no-any-return]

    return forward


def _leading_params(layer: Any) -> tuple[str, ...]:
    names = list(inspect.signature(type(layer).forward).parameters)[1:]  # after self
    return tuple(names[:len(LAYER_PARAMS)])
