"""oneDNN-packed linear layers: the same outputs as torch's linear, and only the layers that may
be packed (a tied output head keeps the embedding's tensor)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kubemaas_runtime.llm import packed_linear
from kubemaas_runtime.llm.packed_linear import PackedLinear, pack_linears


@pytest.fixture(autouse=True)
def small_layers_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed_linear, "MIN_WEIGHTS", 0)  # the test model's layers are tiny


def tiny(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


def test_packed_layers_give_torchs_outputs() -> None:
    model = tiny(tied=False)
    ref = copy.deepcopy(model)
    assert pack_linears(model) == 2 * 7 + 1  # q k v o gate up down per layer, and the head
    assert isinstance(model.lm_head, PackedLinear)
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.inference_mode():
        got, want = model(ids).logits, ref(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_tied_head_is_left_alone() -> None:
    model = tiny(tied=True)
    assert pack_linears(model) == 2 * 7
    assert type(model.lm_head) is torch.nn.Linear
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_bytes_are_counted_once() -> None:
    model = tiny(tied=False)
    before = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())
                 if t.is_floating_point())
    pack_linears(model)
    after = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())
                if t.is_floating_point())
    assert after == before  # the reordered copy replaces the weight


def test_small_layers_keep_torchs_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed_linear, "MIN_WEIGHTS", 32 * 48)
    model = tiny(tied=False)
    # gate, up and down (32 x 48) per layer and the head (64 x 32); q, k, v, o are smaller
    assert pack_linears(model) == 2 * 3 + 1
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_bfloat16_layers_are_packed_too() -> None:
    model = tiny(tied=False).to(torch.bfloat16)
    ref = copy.deepcopy(model)
    assert pack_linears(model) == 2 * 7 + 1
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.inference_mode():
        got, want = model(ids).logits.float(), ref(ids).logits.float()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
