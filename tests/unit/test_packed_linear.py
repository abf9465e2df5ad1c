"""oneDNN-packed linear layers: the same outputs as torch's linear, and only the layers that may
be packed (a tied output head keeps the embedding's tensor); sibling projections fused into one
call with the same outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from kubemaas_runtime.llm import packed_linear
from kubemaas_runtime.llm.packed_linear import FusedLinears, FusedPart, PackedLinear, pack_linears


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


@pytest.mark.skipif(torch.bfloat16 not in packed_linear.packable_dtypes(),
                    reason="this CPU has no oneDNN bfloat16 kernel (AVX-512 BW/VL/DQ or "
                           "AVX-NE-CONVERT); the test below covers that case")
def test_bfloat16_layers_are_packed_too() -> None:
    model = tiny(tied=False).to(torch.bfloat16)
    ref = copy.deepcopy(model)
    assert pack_linears(model) == 2 * 7 + 1
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.inference_mode():
        got, want = model(ids).logits.float(), ref(ids).logits.float()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_bfloat16_layers_keep_torchs_linear_where_onednn_has_no_bfloat16_kernel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # what pack_linears sees on an AVX2-only CPU, where the bfloat16 reorder raises
    monkeypatch.setattr(packed_linear, "packable_dtypes", lambda: (torch.float32,))
    model = tiny(tied=False).to(torch.bfloat16)
    ref = copy.deepcopy(model)
    assert pack_linears(model) == 0
    assert type(model.lm_head) is torch.nn.Linear
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_sibling_projections_are_fused_and_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny(tied=False)
    pack_linears(model)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert isinstance(attn.q_proj, FusedPart) and attn.q_proj.group is attn.v_proj.group
    assert isinstance(mlp.gate_proj, FusedPart) and mlp.gate_proj.group is mlp.up_proj.group
    assert isinstance(attn.o_proj, PackedLinear) and isinstance(mlp.down_proj, PackedLinear)
    calls = []
    real = packed_linear._linear
    monkeypatch.setattr(packed_linear, "_linear", lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode():
        model(torch.tensor([[1, 5, 9]]))
    # per layer: q/k/v once, o, gate/up once, down; and the head
    assert len(calls) == 2 * 4 + 1
    assert all(group._input is None for group in model.modules()
               if isinstance(group, FusedLinears))  # nothing held past the forward


def test_a_fused_part_answers_in_any_order_and_for_any_input() -> None:
    torch.manual_seed(1)
    layers = [torch.nn.Linear(8, n, bias=n != 4) for n in (6, 4, 4)]  # one without a bias
    group = FusedLinears(layers)
    parts = [FusedPart(group, i, layer) for i, layer in enumerate(layers)]
    x, y = torch.randn(3, 8), torch.randn(3, 8)
    with torch.inference_mode():
        for part, layer in [(parts[2], layers[2]), (parts[0], layers[0]), (parts[1], layers[1])]:
            torch.testing.assert_close(part(x), layer(x))
        torch.testing.assert_close(parts[1](y), layers[1](y))  # another input: computed again
        torch.testing.assert_close(parts[1](x), layers[1](x))


def test_qwen2_biases_survive_fusion() -> None:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random biases, so that a lost one shows
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_()
    ref = copy.deepcopy(model)
    pack_linears(model)
    assert isinstance(model.model.layers[0].self_attn.k_proj, FusedPart)
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)


def test_other_families_are_not_fused() -> None:
    model = tiny(tied=False)
    model.config.model_type = "not-a-fused-family"
    assert pack_linears(model) == 2 * 7 + 1
    assert isinstance(model.model.layers[0].self_attn.q_proj, PackedLinear)


def test_olmo2_siblings_are_fused_and_give_its_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    """OLMo 2 normalizes q and k after their projections, which read one tensor as Llama's."""
    torch.manual_seed(0)
    cfg = Olmo2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = Olmo2ForCausalLM(cfg).eval()
    ref = copy.deepcopy(model)
    pack_linears(model)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert isinstance(attn.q_proj, FusedPart) and attn.q_proj.group is attn.v_proj.group
    assert isinstance(mlp.gate_proj, FusedPart) and mlp.gate_proj.group is mlp.up_proj.group
    calls = []
    real = packed_linear._linear
    monkeypatch.setattr(packed_linear, "_linear", lambda *a: calls.append(1) or real(*a))
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)
    assert len(calls) == 2 * 4 + 1  # per layer: q/k/v once, o, gate/up once, down; the head
