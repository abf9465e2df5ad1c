"""LoRA adapters (llm/lora.py) against PEFT, which makes them: a model whose layers are wrapped
gives PEFT's logits for the rows of an adapter and the base model's for the others, with plain,
oneDNN-packed and fused layers and GPT-2's Conv1D; rsLoRA and alpha_pattern scale as PEFT
scales; adapters that cannot be served are refused with the reason."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.llm import packed_linear
from kubemaas_runtime.llm.kv_cache import UNSALTED, cache_root
from kubemaas_runtime.llm.lora import AdapterError, LoraLinear, LoraSet
from kubemaas_runtime.llm.packed_linear import FusedPart, pack_linears
from kubemaas_testbed.llm_models import build_llm

# PEFT calls an alias transformers deprecated
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama() -> Any:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2() -> Any:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=64)).eval()


def make_adapter(model: Any, out: Path, seed: int = 1, **config: Any) -> Any:
    """A PEFT adapter of ``model`` with random B (PEFT starts B at zero: no change), saved to
    ``out``; returns the PEFT model."""
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**config))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    peft_model.save_pretrained(str(out))
    return peft_model.eval()


def served_with(base: Any, path: Path, max_loras: int = 1) -> tuple[Any, LoraSet, Any]:
    """A copy of ``base`` with its layers wrapped and the adapter at ``path`` added."""
    served = copy.deepcopy(base)
    loras = LoraSet(served, max_loras=max_loras, max_rank=8)
    adapter = loras.read(path.name, path)
    loras.add(adapter)
    return served, loras, adapter


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits  # type: ignore[no-any-return]


@pytest.mark.parametrize("packed", [False, True])
def test_rows_of_an_adapter_get_peft_logits_the_others_the_base(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packed: bool) -> None:
    base = tiny_llama()
    tuned = make_adapter(base, tmp_path / "a", r=4, lora_alpha=8, target_modules=LLAMA_TARGETS)
    served = copy.deepcopy(base)
    if packed:  # oneDNN layers, q/k/v and gate/up fused
        monkeypatch.setattr(packed_linear, "MIN_WEIGHTS", 0)
        pack_linears(served)
        assert isinstance(served.model.layers[0].self_attn.q_proj, FusedPart)
    loras = LoraSet(served, max_loras=2, max_rank=8)
    adapter = loras.read("a", tmp_path / "a")
    loras.add(adapter)
    assert isinstance(served.model.layers[0].self_attn.q_proj, LoraLinear)
    assert len(adapter.pairs) == 2 * 7 and adapter.rank == 4
    ids = torch.tensor([[1, 5, 9, 2, 7, 3], [4, 4, 8, 1, 2, 6]])
    want_tuned, want_base = logits(tuned, ids), logits(base, ids)
    assert not torch.allclose(want_tuned, want_base, atol=1e-3)  # the adapter changes answers

    assert loras.set_step([adapter.id] * 12)  # every row
    torch.testing.assert_close(logits(served, ids), want_tuned, rtol=1e-5, atol=1e-5)
    assert loras.set_step([adapter.id] * 6 + [0] * 6)  # a mixed batch: rows by adapter
    mixed = logits(served, ids)
    torch.testing.assert_close(mixed[0], want_tuned[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], want_base[1], rtol=1e-5, atol=1e-5)
    assert not loras.set_step([0] * 12)
    torch.testing.assert_close(logits(served, ids), want_base, rtol=1e-5, atol=1e-5)


def test_two_adapters_in_one_batch(tmp_path: Path) -> None:
    base = tiny_llama()
    first = make_adapter(base, tmp_path / "a", seed=1, r=4, target_modules=["q_proj", "v_proj"])
    second = make_adapter(base, tmp_path / "b", seed=2, r=2, lora_alpha=32,
                          target_modules=["down_proj", "o_proj"])
    served = copy.deepcopy(base)
    loras = LoraSet(served, max_loras=2, max_rank=8)
    a, b = loras.read("a", tmp_path / "a"), loras.read("b", tmp_path / "b")
    loras.add(a)
    loras.add(b)
    ids = torch.tensor([[1, 5, 9, 2], [4, 4, 8, 1], [3, 2, 1, 0]])
    loras.set_step([b.id] * 4 + [0] * 4 + [a.id] * 4)
    got = logits(served, ids)
    torch.testing.assert_close(got[0], logits(second, ids)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], logits(base, ids)[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], logits(first, ids)[2], rtol=1e-5, atol=1e-5)


def test_gpt2_conv1d_layers(tmp_path: Path) -> None:
    base = tiny_gpt2()
    tuned = make_adapter(base, tmp_path / "g", r=4, target_modules=["c_attn", "c_proj", "c_fc"],
                         fan_in_fan_out=True)
    served, loras, adapter = served_with(base, tmp_path / "g")
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    loras.set_step([adapter.id] * 5)
    torch.testing.assert_close(logits(served, ids), logits(tuned, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma", "gemma2", "phi3", "gemma3_text", "olmo2",
                                    "granite"])
def test_the_other_dense_families_get_peft_logits(family: str, tmp_path: Path) -> None:
    """An adapter of every linear layer (phi3's fused qkv_proj and gate_up_proj too)."""
    base = AutoModelForCausalLM.from_pretrained(
        str(build_llm(tmp_path / family, family=family))).eval()
    tuned = make_adapter(base, tmp_path / "a", r=4, target_modules="all-linear")
    served, loras, adapter = served_with(base, tmp_path / "a")
    head = base.get_output_embeddings()
    assert len(adapter.pairs) == sum(isinstance(m, torch.nn.Linear) and m is not head
                                     for m in base.modules())
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    assert not torch.allclose(logits(tuned, ids), logits(base, ids), atol=1e-3)
    loras.set_step([adapter.id] * 5)
    torch.testing.assert_close(logits(served, ids), logits(tuned, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
# (PEFT's own notice, making the experts' adapter: its rank for them is not a module's)
@pytest.mark.filterwarnings("ignore:The following (rank|alpha)_pattern keys:RuntimeWarning")
def test_a_mixture_of_experts_serves_adapters_of_its_linear_layers_only(
        family: str, tmp_path: Path) -> None:
    """Its attention's layers as PEFT; its experts (3-D parameters, which PEFT adapts through
    target_parameters) are refused with the reason."""
    base = AutoModelForCausalLM.from_pretrained(
        str(build_llm(tmp_path / family, family=family))).eval()
    tuned = make_adapter(base, tmp_path / "attn", r=4, target_modules=["q_proj", "o_proj"])
    served, loras, adapter = served_with(base, tmp_path / "attn")
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    loras.set_step([adapter.id] * 5)
    torch.testing.assert_close(logits(served, ids), logits(tuned, ids), rtol=1e-5, atol=1e-5)
    make_adapter(base, tmp_path / "experts", r=4, target_modules="all-linear")
    with pytest.raises(AdapterError, match="target_parameters, which is not served"):
        loras.read("experts", tmp_path / "experts")


def test_a_family_whose_layers_are_not_known_refuses_to_start() -> None:
    model = tiny_llama()
    model.config.model_type = "not-a-known-family"
    with pytest.raises(StartupError, match="not served for model_type 'not-a-known-family'"):
        LoraSet(model, max_loras=1, max_rank=8)


def test_rslora_and_alpha_pattern_scale_as_peft(tmp_path: Path) -> None:
    base = tiny_llama()
    tuned = make_adapter(base, tmp_path / "a", r=4, lora_alpha=8, use_rslora=True,
                         alpha_pattern={"v_proj": 2}, target_modules=["q_proj", "v_proj"])
    served, loras, adapter = served_with(base, tmp_path / "a")
    scales = {layer.rsplit(".", 1)[1]: scale for layer, (_, _, scale) in adapter.pairs.items()}
    assert scales == {"q_proj": 8 / 2, "v_proj": 2 / 2}  # alpha / sqrt(r)
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    loras.set_step([adapter.id] * 5)
    torch.testing.assert_close(logits(served, ids), logits(tuned, ids), rtol=1e-5, atol=1e-5)


def test_a_reloaded_peft_model_agrees(tmp_path: Path) -> None:
    """What PEFT itself reads back from the directory is what the layers serve."""
    base = tiny_llama()
    make_adapter(base, tmp_path / "a", r=4, target_modules=LLAMA_TARGETS)
    reread = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "a")).eval()
    served, loras, adapter = served_with(base, tmp_path / "a")
    ids = torch.tensor([[2, 3, 5, 7, 11]])
    loras.set_step([adapter.id] * 5)
    torch.testing.assert_close(logits(served, ids), logits(reread, ids), rtol=1e-5, atol=1e-5)


def rewrite_config(path: Path, **changes: Any) -> None:
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(config))


@pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`:UserWarning")
def test_adapters_that_cannot_be_served(tmp_path: Path) -> None:
    base = tiny_llama()
    loras = LoraSet(copy.deepcopy(base), max_loras=1, max_rank=4)

    def refused(path: Path, *words: str) -> None:
        with pytest.raises(AdapterError) as err:
            loras.read("x", path)
        for word in words:
            assert word in str(err.value)

    refused(tmp_path / "missing", "no adapter_config.json")
    make_adapter(base, tmp_path / "big", r=8, target_modules=["q_proj"])
    refused(tmp_path / "big", "rank 8 is over --max-lora-rank 4")
    make_adapter(base, tmp_path / "head", r=2, target_modules=["lm_head"])
    refused(tmp_path / "head", "lm_head", "is not a LoRA pair's A or B")  # PEFT saved the head
    make_adapter(tiny_gpt2(), tmp_path / "other", r=2, target_modules=["c_attn"],
                 fan_in_fan_out=True)
    refused(tmp_path / "other", "'transformer.h.0.attn.c_attn'", "not a linear layer of this "
            "model")
    make_adapter(base, tmp_path / "dora", r=2, target_modules=["q_proj"], use_dora=True)
    refused(tmp_path / "dora", "use_dora")
    make_adapter(base, tmp_path / "saved", r=2, target_modules=["q_proj"],
                 modules_to_save=["lm_head"])
    refused(tmp_path / "saved", "modules_to_save")
    make_adapter(base, tmp_path / "ok", r=2, target_modules=["q_proj"])
    rewrite_config(tmp_path / "ok", bias="all")
    refused(tmp_path / "ok", "bias 'all'")
    rewrite_config(tmp_path / "ok", bias="none", peft_type="IA3")
    refused(tmp_path / "ok", "peft_type 'IA3'")
    (tmp_path / "ok" / "adapter_config.json").write_text("{not json")
    refused(tmp_path / "ok", "not valid JSON")
    make_adapter(base, tmp_path / "bin", r=2, target_modules=["q_proj"])
    (tmp_path / "bin" / "adapter_model.safetensors").unlink()
    refused(tmp_path / "bin", "no adapter_model.safetensors")
    (tmp_path / "bin" / "adapter_model.safetensors").write_bytes(b"\x00" * 7)
    refused(tmp_path / "bin", "cannot be read")


def test_an_unloaded_adapter_keeps_its_weights_while_in_use(tmp_path: Path) -> None:
    base = tiny_llama()
    make_adapter(base, tmp_path / "a", r=2, target_modules=["q_proj"])
    loras = LoraSet(copy.deepcopy(base), max_loras=1, max_rank=4)
    adapter = loras.read("a", tmp_path / "a")
    loras.add(adapter)
    with pytest.raises(AdapterError, match="already loaded"):
        loras.add(loras.read("a", tmp_path / "a"))
    layer = loras.layers["model.layers.0.self_attn.q_proj"]
    assert adapter.id in layer.pairs
    loras.remove("a")
    assert "a" not in loras.by_name and adapter.id in loras.retired
    loras.drop_retired(in_use={adapter.id})  # a request still runs with it
    assert adapter.id in layer.pairs and loras.names[adapter.id] == "a"
    loras.drop_retired(in_use=set())
    assert adapter.id not in layer.pairs and not loras.retired and adapter.id not in loras.names
    with pytest.raises(KeyError):
        loras.remove("a")
    again = loras.read("a", tmp_path / "a")
    assert again.id != adapter.id  # ids are never reused (the prefix cache keys on them)


def test_each_adapter_has_its_own_prefix_cache_chain() -> None:
    roots = {cache_root(None), cache_root(None, 1), cache_root(None, 2), cache_root("s"),
             cache_root("s", 1)}
    assert len(roots) == 5
    assert cache_root(None) == UNSALTED and cache_root("s", 1) == cache_root("s", 1)


def test_weights_of_another_rank_than_the_config_says_are_refused(tmp_path: Path) -> None:
    """PEFT refuses to load pairs whose rank is not the config's ``r`` (or its rank_pattern's):
    they were served, scaled by their own rank (numbers neither PEFT nor vLLM give), and pairs
    of rank 0 failed with a ZeroDivisionError (a 500 from /v1/load_lora_adapter)."""
    from safetensors.torch import load_file, save_file

    base = tiny_llama()
    loras = LoraSet(copy.deepcopy(base), max_loras=1, max_rank=8)
    make_adapter(base, tmp_path / "a", r=4, target_modules=["q_proj", "v_proj"])
    rewrite_config(tmp_path / "a", r=2)
    with pytest.raises(AdapterError, match=r"'model.layers.0.self_attn.q_proj''s pair has rank "
                       r"4, but its r in adapter_config.json"):
        loras.read("x", tmp_path / "a")
    rewrite_config(tmp_path / "a", r=4, rank_pattern={"v_proj": 2})
    with pytest.raises(AdapterError, match=r"v_proj''s pair has rank 4.* is 2"):
        loras.read("x", tmp_path / "a")
    rewrite_config(tmp_path / "a", rank_pattern={})
    weights = tmp_path / "a" / "adapter_model.safetensors"
    save_file({k: (v[:0] if ".lora_A." in k else v[:, :0]).contiguous()
               for k, v in load_file(weights).items()}, weights)
    with pytest.raises(AdapterError, match="has rank 0"):
        loras.read("x", tmp_path / "a")
    # a rank_pattern PEFT wrote itself is served as PEFT serves it
    tuned = make_adapter(base, tmp_path / "p", r=4, rank_pattern={"v_proj": 2},
                         target_modules=["q_proj", "v_proj"])
    served, loras, adapter = served_with(base, tmp_path / "p")
    assert {a.shape[0] for a, _, _ in adapter.pairs.values()} == {2, 4}
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    loras.set_step([adapter.id] * 5)
    torch.testing.assert_close(logits(served, ids), logits(tuned, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [0, -16])
def test_an_alpha_of_zero_or_below_scales_as_peft(tmp_path: Path, alpha: int) -> None:
    """PEFT (and vLLM) serve any lora_alpha: 0 leaves the model as it is, a negative one
    subtracts the update. Such adapters were refused ("lora_alpha must be a positive
    number")."""
    base = tiny_llama()
    tuned = make_adapter(base, tmp_path / "a", r=4, lora_alpha=alpha,
                         target_modules=LLAMA_TARGETS)
    served, loras, adapter = served_with(base, tmp_path / "a")
    assert {scale for _, _, scale in adapter.pairs.values()} == {alpha / 4}
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    loras.set_step([adapter.id] * 5)
    torch.testing.assert_close(logits(served, ids), logits(tuned, ids), rtol=1e-5, atol=1e-5)
    if alpha == 0:
        torch.testing.assert_close(logits(served, ids), logits(base, ids))


READ_IN_A_CHILD = """
import sys
from pathlib import Path
from tests.unit.test_llm_lora import tiny_llama
from kubemaas_runtime.llm.lora import AdapterError, LoraSet
try:
    LoraSet(tiny_llama(), max_loras=1, max_rank=8).read("x", Path(sys.argv[1]))
except AdapterError as exc:
    print(exc)
"""


def test_a_pattern_that_would_match_for_ever_is_refused(tmp_path: Path) -> None:
    """An alpha_pattern (or rank_pattern) key is a regular expression matched against each
    layer name: with Python's re, (.|.)*j\\d backtracks for ever holding the GIL, and the whole
    server froze (/health unanswered) on /v1/load_lora_adapter. Now matching has a time limit
    and such an adapter is refused. (In a child process: without the limit it never ends.)"""
    import os
    import subprocess
    import sys

    make_adapter(tiny_llama(), tmp_path / "a", r=4, target_modules=["q_proj"])
    rewrite_config(tmp_path / "a", alpha_pattern={r"(.|.)*j\d": 2})
    proc = subprocess.run([sys.executable, "-c", READ_IN_A_CHILD, str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == (
        f"{tmp_path / 'a'}: lora_alpha / alpha_pattern for 'model.layers.0.self_attn.q_proj': "
        r"the pattern '(.|.)*j\\d' takes more than 0.25 s to match")
