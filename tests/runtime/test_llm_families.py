"""Every served architecture family through the engine in-process (no server): greedy answers
for a batch of prompts of different lengths, read in chunks, equal transformers' ``generate()``
(the windowed families' tiny models window some layers with a window shorter than the longer
prompts); and bfloat16 weights and KV cache on CPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.llm.attention import PagedStep
from kubemaas_runtime.llm.decoder_stack import STACK_FAMILIES, experts_in_one_graph, stack_forward
from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import load_hf, load_pooling_model
from kubemaas_runtime.llm.sampling import SamplingParams
from kubemaas_testbed.llm_models import FAMILIES, TINY_WINDOW, build_llm

TEXTS = ["Once upon a time", "The scheduler looks at every request in the queue and decides",
         "Numbers: one, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve "
         "and the colors red, orange, yellow, green, blue"]


def reference(model_dir: Path, prompt: list[int], n: int, eos: frozenset[int],
              dtype: torch.dtype = torch.float32) -> list[int]:
    """generate() of the model loaded apart (the engine's copy attends only to engine steps)."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n,  # type: ignore[operator]
                             do_sample=False)
    ids = [int(t) for t in out[0, len(prompt):]]
    return ids  # (an EOS that ends the answer too: the engine returns it as its last token)


# the tiny models' windowed layers (their configs' layer_types)
WINDOWED = {"gemma2": frozenset({0, 2}), "gemma3_text": frozenset({0, 1, 2})}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_greedy_equals_generate(family: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model_dir = build_llm(tmp_path / family, family=family)
    lm = load_hf(model_dir, device="cpu")
    assert lm.model_type == family
    if family in WINDOWED:  # served over all its positions, the window in the masks
        assert (lm.window, lm.sliding, lm.max_position) == (TINY_WINDOW, WINDOWED[family], 2048)
    engine = Engine(lm, EngineConfig(kv_cache_bytes=8 << 20, max_model_len=256,
                                     max_num_seqs=8, max_num_batched_tokens=16))
    prompts = [list(lm.tokenizer(t)["input_ids"]) for t in TEXTS]
    outs = engine.generate_sync(prompts, SamplingParams(max_tokens=16, temperature=0.0))
    for prompt, out in zip(prompts, outs, strict=True):
        assert out == reference(model_dir, prompt, 16, lm.eos_ids)
    assert max(map(len, prompts)) + 16 > 2 * TINY_WINDOW
    assert engine.pool.used == 0
    # decode steps replayed a traced graph, but for the families that keep their own forward
    traced = engine.traced is not None and engine.traced.replays > 0
    assert traced == (family in STACK_FAMILIES)


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "llama", "phi3", "olmo2",
                                    "gemma", "gemma2", "gemma3_text", "granite", "mixtral",
                                    "qwen3_moe"])
def test_the_direct_stack_gives_the_models_own_logits(family: str, tmp_path: Path) -> None:
    """Every step of a batch (prompt chunks and decodes together) through decoder_stack.py's
    forward and through the model's own: the same logits, bit for bit (Gemma 2 and 3: their
    logits soft-capped, Gemma 3: its two rotary bases; Granite: its multipliers; Mixtral and
    Qwen3-MoE: their experts, Mixtral's layers' arguments in their order)."""
    torch.set_num_threads(1)
    lm = load_hf(build_llm(tmp_path / family, family=family), device="cpu")
    assert lm.stack is not None
    own = dataclasses.replace(lm, stack=None)
    steps = []

    def checked(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                step: PagedStep) -> torch.Tensor:
        expected = own.forward(input_ids, position_ids, keep, step)
        assert lm.stack is not None
        logits = lm.stack(input_ids, position_ids, keep, step)
        assert torch.equal(logits, expected)
        steps.append((step.decode_rows, len(step.chunks)))
        return logits

    engine = Engine(dataclasses.replace(lm, stack=checked),
                    EngineConfig(kv_cache_bytes=8 << 20, max_model_len=256, max_num_seqs=8,
                                 max_num_batched_tokens=16, traced_decode=False))
    prompts = [list(lm.tokenizer(t)["input_ids"]) for t in TEXTS]
    engine.generate_sync(prompts, SamplingParams(max_tokens=8, temperature=0.0))
    assert any(d and c for d, c in steps) and any(d and not c for d, c in steps)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in STACK_FAMILIES])
def test_other_families_keep_their_own_forward(family: str, tmp_path: Path) -> None:
    """GPT-2's stack has other parts."""
    assert load_hf(build_llm(tmp_path / family, family=family), device="cpu").stack is None


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_experts_looped_in_python_keep_their_own_forward(family: str, tmp_path: Path) -> None:
    """transformers' eager experts loop in Python over the experts a step's routing hit, which
    a traced or CUDA graph of the stack would freeze at the step it recorded: with those, a
    mixture of experts keeps its own forward; with grouped_mm (transformers' default here) or
    batched_mm it takes the stack."""
    lm = load_hf(build_llm(tmp_path / family, family=family), device="cpu")
    assert lm.model.config._experts_implementation == "grouped_mm"
    assert lm.stack is not None and experts_in_one_graph(lm.model)
    lm.model.config._experts_implementation = "eager"
    assert stack_forward(lm.model) is None
    lm.model.config._experts_implementation = "batched_mm"
    assert stack_forward(lm.model) is not None


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # gemma2: 16-bit soft-capped scores
def test_bfloat16_on_cpu(family: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model_dir = build_llm(tmp_path / family, family=family)
    lm = load_hf(model_dir, device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16 and next(lm.model.parameters()).dtype == torch.bfloat16
    engine = Engine(lm, EngineConfig(kv_cache_bytes=4 << 20, max_model_len=256))
    assert engine.store.keys[0].dtype == torch.bfloat16
    prompt = list(lm.tokenizer(TEXTS[0])["input_ids"])
    (out,) = engine.generate_sync([prompt], SamplingParams(max_tokens=8, temperature=0.0))
    assert out == reference(model_dir, prompt, 8, lm.eos_ids, torch.bfloat16)


def _rewritten(model_dir: Path, **changes: Any) -> Path:
    path = model_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return model_dir


def test_gemma3_multimodal_is_refused_naming_its_text_form(tmp_path: Path) -> None:
    model_dir = _rewritten(build_llm(tmp_path / "gemma3", family="gemma3_text"),
                           model_type="gemma3",
                           architectures=["Gemma3ForConditionalGeneration"])
    with pytest.raises(StartupError, match=r"multimodal.*'gemma3_text' \(Gemma3ForCausalLM\)"):
        load_hf(model_dir, device="cpu")


def test_gemma2_embeddings_as_its_own_forward(tmp_path: Path) -> None:
    """transformers runs Gemma 2 without sdpa (its soft-capped scores): the pooling runner
    loads it with eager attention (with sdpa it refused to start)."""
    model_dir = _rewritten(build_llm(tmp_path / "gemma2", family="gemma2"),
                           architectures=["Gemma2Model"])
    pooled = load_pooling_model(model_dir, device="cpu", packed_linear=False)
    own = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    ids = pooled.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(pooled.model(**ids).last_hidden_state,
                                   own(**ids).last_hidden_state)
