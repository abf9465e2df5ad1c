"""RoPE scaling configurations through the engine: linear, dynamic, llama3 and yarn answer
as transformers' ``generate()`` over the model's whole length, batched and read in chunks; a
``longrope`` model, whose frequencies depend on the longest sequence of a forward, is served
only up to its ``original_max_position_embeddings``, where they do not change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import load_hf, load_pooling_model
from kubemaas_runtime.llm.sampling import SamplingParams
from kubemaas_testbed.llm_models import build_llm

ORIGINAL = 32
SCALINGS: dict[str, dict[str, Any]] = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    # dynamic NTK changes the frequencies only past max_position_embeddings: never served
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "yarn": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": ORIGINAL},
    "longrope": {"rope_type": "longrope", "factor": 2.0,
                 "original_max_position_embeddings": ORIGINAL},
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llm(tmp_path_factory.mktemp("rope") / "llama", family="llama")


def scaled(base: Path, out: Path, rope: dict[str, Any]) -> Path:
    out.mkdir()
    for item in base.iterdir():
        (out / item.name).write_bytes(item.read_bytes())
    config = json.loads((out / "config.json").read_text())
    params = {**config["rope_parameters"], **rope}
    if rope["rope_type"] == "longrope":
        half = config["hidden_size"] // config["num_attention_heads"] // 2
        params.update(short_factor=[1.0] * half, long_factor=[3.0] * half)
    config.update(rope_parameters=params, max_position_embeddings=2 * ORIGINAL)
    (out / "config.json").write_text(json.dumps(config))
    return out


def generate(model: Any, prompt: list[int], n: int, eos: frozenset[int]) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    ids = [int(t) for t in out[0, len(prompt):]]
    return ids[:-1] if ids and ids[-1] in eos else ids


@pytest.mark.parametrize("name", list(SCALINGS))
def test_rope_scaling_answers_as_generate(name: str, base: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model_dir = scaled(base, tmp_path / name, SCALINGS[name])
    lm = load_hf(model_dir, device="cpu")
    # longrope: past the original length every position of a forward would change frequency
    assert lm.max_position == (ORIGINAL if name == "longrope" else 2 * ORIGINAL)
    engine = Engine(lm, EngineConfig(kv_cache_bytes=8 << 20, max_model_len=lm.max_position,
                                     max_num_seqs=8, max_num_batched_tokens=16))
    gen = torch.Generator().manual_seed(1)
    lengths = [4, lm.max_position // 2, lm.max_position - 12]
    prompts = [torch.randint(5, 200, (n,), generator=gen).tolist() for n in lengths]
    outs = engine.generate_sync(prompts, SamplingParams(max_tokens=10, temperature=0.0))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    for prompt, out in zip(prompts, outs, strict=True):
        assert out == generate(model, prompt, 10, lm.eos_ids), len(prompt)


def test_phi3_longrope_answers_as_generate(tmp_path: Path) -> None:
    """Phi-3's long-context checkpoints: served up to their original length (as any longrope
    model), where the engine's answers are generate()'s."""
    torch.set_num_threads(1)
    phi3 = build_llm(tmp_path / "phi3", family="phi3")
    model_dir = scaled(phi3, tmp_path / "longrope", SCALINGS["longrope"])
    config = json.loads((model_dir / "config.json").read_text())
    config["original_max_position_embeddings"] = ORIGINAL  # where Phi-3's configs keep it
    (model_dir / "config.json").write_text(json.dumps(config))
    lm = load_hf(model_dir, device="cpu")
    assert lm.max_position == ORIGINAL and lm.stack is not None
    engine = Engine(lm, EngineConfig(kv_cache_bytes=8 << 20, max_model_len=lm.max_position,
                                     max_num_seqs=8, max_num_batched_tokens=16))
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, 200, (n,), generator=gen).tolist() for n in (4, 16, 20)]
    outs = engine.generate_sync(prompts, SamplingParams(max_tokens=10, temperature=0.0))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    for prompt, out in zip(prompts, outs, strict=True):
        assert out == generate(model, prompt, 10, frozenset()), len(prompt)


def test_longrope_embeddings_are_capped_too(base: Path, tmp_path: Path) -> None:
    """The pooling runner batches texts of different lengths through the model's own forward:
    past the original length one long text would change every other text's embedding."""
    model_dir = scaled(base, tmp_path / "longrope", SCALINGS["longrope"])
    assert load_pooling_model(model_dir, device="cpu").max_position == ORIGINAL
