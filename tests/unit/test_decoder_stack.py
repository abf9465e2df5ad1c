"""Which models the engine runs through decoder_stack.py's direct forward: the plain decoder
stacks whose layers take the leading arguments it passes by position; anything else keeps the
model's own forward (that the logits match bit for bit: tests/runtime/test_llm_families.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

from kubemaas_runtime.llm.decoder_stack import stack_forward


def tiny_llama() -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()


def test_a_llama_stack_is_run_directly() -> None:
    assert stack_forward(tiny_llama()) is not None


def test_layers_whose_arguments_differ_keep_the_models_forward(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def reordered(self: Any, hidden_states: torch.Tensor, position_ids: Any = None,
                  attention_mask: Any = None, **kwargs: Any) -> torch.Tensor:
        return hidden_states

    monkeypatch.setattr(modeling_llama.LlamaDecoderLayer, "forward", reordered)
    assert stack_forward(tiny_llama()) is None


def test_other_families_keep_the_models_forward() -> None:
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    assert stack_forward(GPT2LMHeadModel(cfg).eval()) is None
