"""RoPE scaling configurations through the engine: linear, dynamic, llama3 and yarn answer
as transformers' ``generate()`` over the model's whole length, batched and read in chunks. A
``longrope`` model, whose frequencies transformers switches with the longest sequence of a
forward, is served over its whole length too, with one set of frequencies chosen by the served
length as vLLM chooses it (longrope.pin): the long factors past the original length, else the
short ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import load_hf, load_pooling_model
from kubemaas_runtime.llm.longrope import pin
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


@pytest.mark.parametrize("name", [n for n in SCALINGS if n != "longrope"])
def test_rope_scaling_answers_as_generate(name: str, base: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model_dir = scaled(base, tmp_path / name, SCALINGS[name])
    lm = load_hf(model_dir, device="cpu")
    assert lm.max_position == 2 * ORIGINAL
    engine = Engine(lm, EngineConfig(kv_cache_bytes=8 << 20, max_model_len=lm.max_position,
                                     max_num_seqs=8, max_num_batched_tokens=16))
    gen = torch.Generator().manual_seed(1)
    lengths = [4, lm.max_position // 2, lm.max_position - 12]
    prompts = [torch.randint(5, 200, (n,), generator=gen).tolist() for n in lengths]
    outs = engine.generate_sync(prompts, SamplingParams(max_tokens=10, temperature=0.0))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    for prompt, out in zip(prompts, outs, strict=True):
        assert out == generate(model, prompt, 10, lm.eos_ids), len(prompt)


def longrope_model(tmp_path: Path, family: str) -> Path:
    built = build_llm(tmp_path / family, family=family)
    model_dir = scaled(built, tmp_path / "longrope", SCALINGS["longrope"])
    config = json.loads((model_dir / "config.json").read_text())
    config["original_max_position_embeddings"] = ORIGINAL  # where Phi-3's configs keep it
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


def long_everywhere(model_dir: Path, out: Path) -> Path:
    """The same model with its short factors made the long ones: transformers' own forward
    with the long frequencies at every position, whatever a sequence's length."""
    out.mkdir()
    for item in model_dir.iterdir():
        (out / item.name).write_bytes(item.read_bytes())
    config = json.loads((out / "config.json").read_text())
    params = config["rope_parameters"]
    params["short_factor"] = list(params["long_factor"])
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_longrope_is_served_over_its_whole_length(family: str, tmp_path: Path) -> None:
    """Served past the original length, every position takes the long factors (vLLM's
    choice): short and long prompts in one batch, read in chunks, answer as transformers' own
    forward with the long frequencies, which is generate()'s for a prompt past the original
    length."""
    torch.set_num_threads(1)
    model_dir = longrope_model(tmp_path, family)
    lm = load_hf(model_dir, device="cpu")
    assert lm.max_position == 2 * ORIGINAL
    assert lm.stack is not None  # the direct stack and its recorded decode graphs
    engine = Engine(lm, EngineConfig(kv_cache_bytes=8 << 20, max_model_len=lm.max_position,
                                     max_num_seqs=8, max_num_batched_tokens=16))
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, 200, (n,), generator=gen).tolist() for n in (4, 20, 40, 52)]
    outs = engine.generate_sync(prompts, SamplingParams(max_tokens=10, temperature=0.0))
    long_model = AutoModelForCausalLM.from_pretrained(
        str(long_everywhere(model_dir, tmp_path / "long"))).eval()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    for prompt, out in zip(prompts, outs, strict=True):
        assert out == generate(long_model, prompt, 10, frozenset()), len(prompt)
        if len(prompt) > ORIGINAL:
            assert out == generate(model, prompt, 10, frozenset()), len(prompt)
    short = generate(model, prompts[0], 10, frozenset())
    assert outs[0] != short  # the short factors would have answered otherwise


def test_longrope_within_its_original_length_takes_the_short_factors(tmp_path: Path) -> None:
    """With --max-model-len at most the original length, the short factors: generate()'s."""
    torch.set_num_threads(1)
    model_dir = longrope_model(tmp_path, "phi3")
    lm = load_hf(model_dir, device="cpu")
    engine = Engine(lm, EngineConfig(kv_cache_bytes=8 << 20, max_model_len=ORIGINAL,
                                     max_num_seqs=8, max_num_batched_tokens=16))
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, 200, (n,), generator=gen).tolist() for n in (4, 16, 20)]
    outs = engine.generate_sync(prompts, SamplingParams(max_tokens=10, temperature=0.0))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    for prompt, out in zip(prompts, outs, strict=True):
        assert out == generate(model, prompt, 10, frozenset()), len(prompt)


def test_longrope_embeddings_do_not_depend_on_the_batch(base: Path, tmp_path: Path) -> None:
    """The pooling runner batches texts of different lengths through the model's own forward:
    pinned, a short text's hidden states are the same beside a text past the original length
    (transformers alone would switch every row to the long factors)."""
    model_dir = scaled(base, tmp_path / "longrope", SCALINGS["longrope"])
    model = load_pooling_model(model_dir, device="cpu")
    assert model.max_position == 2 * ORIGINAL
    short = torch.tensor([[7, 8, 9, 10]])
    rows = torch.zeros(2, 50, dtype=torch.long)
    rows[0, :4], rows[1] = short[0], torch.arange(5, 55)
    mask = torch.zeros(2, 50, dtype=torch.long)
    mask[0, :4], mask[1] = 1, 1

    def hidden(ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = model.model(input_ids=ids, attention_mask=attention_mask,
                              output_hidden_states=True)
        return out.hidden_states[-1][0, :4]

    alone, batched = hidden(short, torch.ones_like(short)), hidden(rows, mask)
    assert not torch.allclose(alone, batched, atol=1e-5)  # transformers' own switch
    assert pin(model.model, model.max_position) == "long"
    torch.testing.assert_close(hidden(short, torch.ones_like(short)), hidden(rows, mask))
