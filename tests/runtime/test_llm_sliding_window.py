"""Sliding-window attention: a model whose layers attend to the last ``sliding_window`` keys
(Mistral; Qwen2 and Qwen3 with all layers sliding, or only the layers from
``max_window_layers`` on; Gemma 2 and Gemma 3, the layers their ``layer_types`` say) is
served over its whole ``max_position_embeddings``, as vLLM serves it, and answers as
transformers' ``generate()`` token for token with prompts and outputs far longer than the
window: one request, several of different lengths read in chunks that cross
the window's edge, a prompt read in one chunk, a prefix-cache hit longer than the window;
through the traced decode (with and without decode lanes), the eager steps (decode rows in
width groups) and CUDA graphs' padded inputs (``capture=False``, on the CPU); decode lanes
only where the layers mix windows (test_llm_window_kv.py: every layer windowed). A family whose
use of ``sliding_window`` transformers does not apply (Llama) stays capped to the window."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from kubemaas_runtime.llm import engine as engine_module
from kubemaas_runtime.llm import packing
from kubemaas_runtime.llm.cuda_graphs import GraphedDecode
from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import LanguageModel, load_hf
from kubemaas_runtime.llm.sampling import SamplingParams
from kubemaas_testbed.llm_models import build_llm

WINDOW = 12  # not a multiple of the block size: the window's edge falls inside blocks
POSITIONS = 2048  # the tiny models' max_position_embeddings


def windowed(tmp_path: Path, family: str, **config: Any) -> Path:
    """A tiny random-weight model of ``family`` (fixed seed) with ``config`` written over its
    config.json (the weights do not depend on the window)."""
    model_dir = build_llm(tmp_path / family, family=family)
    path = model_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return model_dir


SLIDING: dict[str, dict[str, Any]] = {
    "mistral": {"sliding_window": WINDOW},
    # every layer from the first windowed (transformers derives layer_types from these)
    "qwen2": {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 0,
              "layer_types": None}}
SLIDING["qwen3"] = SLIDING["qwen2"]
# every layer, as Mistral's
SLIDING["phi3"] = SLIDING["mixtral"] = {"sliding_window": WINDOW}
SLIDING["qwen3_moe"] = {"use_sliding_window": True, "sliding_window": WINDOW}
# Gemma 2 and Gemma 3 window the layers their layer_types say (the tiny models': 0 and 2; 0-2)
LAYER_TYPED = {"gemma2": frozenset({0, 2}), "gemma3_text": frozenset({0, 1, 2})}
for _family in LAYER_TYPED:
    SLIDING[_family] = {"sliding_window": WINDOW}
# the first two of the four layers full-causal, the last two windowed
MIXED = {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 2,
         "layer_types": None}


def generate(model: Any, prompt: list[int], n: int, eos: frozenset[int]) -> list[int]:
    """generate()'s greedy answer going on past an EOS, as the engine's with ``ignore_eos``
    (every call here passes no ``eos``; ``eos_token_id=[]``: none stops it)."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                             eos_token_id=[])
    ids = [int(t) for t in out[0, len(prompt):]]
    return ids[:-1] if ids and ids[-1] in eos else ids


def prompts(lengths: list[int], seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 200, (n,), generator=gen).tolist() for n in lengths]


def engine_for(lm: LanguageModel, path: str, batched: int) -> Engine:
    cfg = EngineConfig(kv_cache_bytes=16 << 20, max_model_len=lm.max_position, max_num_seqs=8,
                       max_num_batched_tokens=batched, block_size=8,
                       traced_decode=path in ("traced", "lanes"), decode_lanes=path == "lanes")
    engine = Engine(lm, cfg)
    if path == "graphs":
        assert lm.stack is not None
        engine._model_step = GraphedDecode(lm.stack, engine.store, cfg.block_size,
                                           lm.vocab_size, cfg.max_num_seqs, capture=False,
                                           sliding=lm.sliding, window=lm.window)
    return engine


@pytest.mark.parametrize(("family", "path"), [("mistral", "lanes"), ("mistral", "traced"),
                                              ("mistral", "eager"), ("mistral", "graphs"),
                                              ("qwen2", "lanes"), ("qwen3", "eager"),
                                              ("qwen2-mixed", "lanes"), ("qwen2-mixed", "eager"),
                                              ("qwen2-mixed", "graphs"),
                                              ("gemma2", "lanes"), ("gemma2", "eager"),
                                              ("gemma3_text", "lanes"), ("phi3", "traced"),
                                              ("mixtral", "eager"), ("qwen3_moe", "eager"),
                                              ("qwen3_moe", "traced")])
def test_windowed_answers_equal_generate(family: str, path: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    grouped = []
    if path == "eager":  # decode rows attend in groups of similar width (packing.py)
        monkeypatch.setattr(packing, "GROUP_SAVES_BLOCKS", 1)

        def spied(*args: Any) -> Any:
            rows, groups = packing.decode_groups(*args)
            grouped.append(groups is not None)
            return rows, groups
        monkeypatch.setattr(engine_module, "decode_groups", spied)
    mixed = family.endswith("-mixed") or family in LAYER_TYPED
    model_dir = windowed(tmp_path, family.removesuffix("-mixed"),
                         **(MIXED if family.endswith("-mixed") else SLIDING[family]))
    lm = load_hf(model_dir, device="cpu")
    assert lm.max_position == POSITIONS and lm.window == WINDOW  # not capped to the window
    assert lm.sliding == (LAYER_TYPED.get(family, frozenset({2, 3})) if mixed else frozenset())
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    # several requests of different lengths, their prompts read 16 tokens a step beside the
    # others' decodes: chunks that start before the window's edge and end past it
    engine = engine_for(lm, path, batched=16)
    # (a model on the direct stack, mixed layers or not, steps from the traced graph)
    assert (engine.traced is not None) == (path in ("traced", "lanes") and
                                           lm.stack is not None)
    # (a model windowed on every layer keeps no lanes: its decode rows read their windows)
    assert (engine.lanes is not None) == (path == "lanes" and mixed)
    batch = prompts([3, 11, 29, 57])
    outs = engine.generate_sync(batch, params)
    for prompt, out in zip(batch, outs, strict=True):
        assert out == generate(model, prompt, 40, frozenset()), len(prompt)
    assert any(grouped) == (path == "eager")
    if engine.traced is not None:
        assert not engine.traced.failed and engine.traced.replays > 0
    if path == "graphs":
        assert isinstance(engine._model_step, GraphedDecode)
        assert engine._model_step.replays > 0
    # one request whose 50-token prompt is read in one chunk
    engine = engine_for(lm, path, batched=2048)
    (long,) = prompts([50], seed=2)
    assert engine.generate_sync([long], params) == [generate(model, long, 40, frozenset())]
    # the same prompt's blocks again from the prefix cache (40 tokens, past the window), then
    # its own tail and a continuation read in chunks
    engine.pool.queried_tokens = engine.pool.hit_tokens = 0
    longer = long + prompts([20], seed=3)[0]
    assert engine.generate_sync([longer], params) == [generate(model, longer, 40, frozenset())]
    assert engine.pool.hit_tokens >= 40
    assert engine.pool.used == 0


def test_a_window_transformers_does_not_apply_stays_capped(tmp_path: Path) -> None:
    """transformers' Llama ignores a config's ``sliding_window``; what the checkpoint meant
    by it is not known, so it is served up to the window, where both readings agree."""
    lm = load_hf(windowed(tmp_path, "llama", sliding_window=WINDOW), device="cpu")
    assert lm.max_position == WINDOW and lm.window is None


def test_a_qwen2_window_on_no_layer_is_full_causal(tmp_path: Path) -> None:
    """use_sliding_window with max_window_layers past the last layer windows none of them."""
    lm = load_hf(windowed(tmp_path, "qwen2", use_sliding_window=True, sliding_window=WINDOW,
                          max_window_layers=4, layer_types=None), device="cpu")
    assert lm.max_position == POSITIONS and lm.window is None and not lm.sliding


def test_no_window_is_full_causal(tmp_path: Path) -> None:
    lm = load_hf(build_llm(tmp_path / "mistral", family="mistral"), device="cpu")
    assert lm.max_position == POSITIONS and lm.window is None


def test_a_negative_window_refuses_to_start(tmp_path: Path) -> None:
    """A negative window masked every key of the engine's steps (transformers' own forward
    does the same, and answers NaN): refused at startup. (transformers' config already refuses
    a window that is not an integer.)"""
    from kubemaas_runtime.errors import StartupError

    with pytest.raises(StartupError, match="sliding_window must be a positive integer"):
        load_hf(windowed(tmp_path, "mistral", sliding_window=-4), device="cpu")

