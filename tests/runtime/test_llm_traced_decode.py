"""Steps replayed from the traced graphs (llm/traced_decode.py), in-process: for each family
whose stack is traced, with torch's linear layers and with oneDNN-packed ones, every decode-only
step of a changing batch (sequences arriving and finishing, contexts crossing blocks) and every
step of decodes and a batch of prompt chunks gives the eager stack's logits bit for bit; a stack
that cannot be traced leaves the engine eager, with the same answers."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from kubemaas_runtime.llm import packed_linear
from kubemaas_runtime.llm.attention import ChunkBatch, PagedStep
from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import load_hf
from kubemaas_runtime.llm.traced_decode import TracedDecode
from kubemaas_testbed.llm_models import build_llm

from .llm_staggered import run_staggered
from .test_llm_sliding_window import MIXED, windowed

CONFIG = EngineConfig(kv_cache_bytes=8 << 20, max_model_len=256, max_num_seqs=8,
                      max_num_batched_tokens=32, block_size=8)


@pytest.mark.parametrize("packed", [False, True], ids=["torch-linear", "onednn"])
@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "llama", "phi3", "olmo2",
                                    "gemma", "gemma2", "gemma3_text", "granite",
                                    "qwen2-mixed"])
def test_replayed_decode_steps_give_the_eager_logits(family: str, packed: bool, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """(qwen2-mixed: its last two layers windowed, window 12, and Gemma 2 and 3, some of their
    layers windowed: the graphs take the windowed layers' tables and masks too, narrower than
    the full layers' past the window.)"""
    torch.set_num_threads(1)
    monkeypatch.setattr(packed_linear, "MIN_WEIGHTS", 0)  # the test models' layers are tiny
    model_dir = windowed(tmp_path, "qwen2", **MIXED) if family.endswith("-mixed") else \
        build_llm(tmp_path / family, family=family)
    # (the tiny Gemma 2 and Gemma 3 window some of their layers too)
    mixed = family.endswith("-mixed") or family in ("gemma2", "gemma3_text")
    lm = load_hf(model_dir, device="cpu", packed_linear=packed)
    assert lm.stack is not None and bool(lm.sliding) == mixed
    narrower: list[bool] = []  # decode steps whose windowed tables were narrower
    assert any(b.is_mkldnn for b in lm.model.buffers()) == packed
    traced = TracedDecode(lm.model, lm.stack)
    decode_steps: list[tuple[int, int]] = []
    prompt_steps: list[tuple[int, int, int]] = []  # decode rows, chunks, prompt tokens

    def both(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
             step: PagedStep) -> torch.Tensor:
        assert lm.stack is not None
        logits = traced(input_ids, position_ids, keep, step)
        expected = lm.stack(input_ids, position_ids, keep, step)
        assert torch.equal(logits, expected)
        assert step.decode_blocks is not None or not step.decode_rows
        if not step.chunks:
            assert step.decode_blocks is not None
            decode_steps.append((step.decode_rows, step.decode_blocks.shape[1]))
            if mixed:
                assert step.window_decode_blocks is not None
                narrower.append(step.window_decode_blocks.shape[1] < step.decode_blocks.shape[1])
        elif step.decode_rows and step.units is not None and len(step.units) == 1 and \
                isinstance(step.units[0], ChunkBatch):
            prompt_steps.append((step.decode_rows, len(step.chunks),
                                 sum(c.length for c in step.chunks)))
        return expected

    engine = Engine(dataclasses.replace(lm, stack=both),
                    dataclasses.replace(CONFIG, traced_decode=False))
    run_staggered(engine, lm)
    assert not traced.failed
    # the first step of each kind traced its graph
    assert traced.replays == len(decode_steps) - 1 + len(prompt_steps) - 1
    assert traced.replays_with_prompts == len(prompt_steps) - 1
    assert len({rows for rows, _ in decode_steps}) >= 4  # batches of many sizes
    assert len({width for _, width in decode_steps}) >= 4  # contexts of many blocks
    assert len({rows for rows, _, _ in prompt_steps}) >= 2, prompt_steps
    assert len({tokens for _, _, tokens in prompt_steps}) >= 3, prompt_steps
    assert any(narrower) == mixed


def test_the_engine_replays_decode_steps_and_answers_as_eager(tiny_llama: Path) -> None:
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    eager = Engine(lm, dataclasses.replace(CONFIG, traced_decode=False))
    assert eager.traced is None
    want = run_staggered(eager, lm)
    engine = Engine(lm, CONFIG)
    assert run_staggered(engine, lm) == want
    assert engine.traced is not None and not engine.traced.failed
    assert engine.traced.replays > 20
    assert engine.traced.replays_with_prompts > 0


def test_a_stack_that_cannot_be_traced_stays_eager(tiny_llama: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A stack whose Python reads a tensor's value (the trace would freeze it) is not traced:
    the engine logs why and runs every step eagerly."""
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    direct = lm.stack
    assert direct is not None

    def branching(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                  step: PagedStep) -> torch.Tensor:
        if int(position_ids.max()) < 0:  # never, but a value the trace would freeze
            raise AssertionError("negative positions")
        return direct(input_ids, position_ids, keep, step)

    want = run_staggered(Engine(lm, dataclasses.replace(CONFIG, traced_decode=False)), lm)
    engine = Engine(dataclasses.replace(lm, stack=branching), CONFIG)
    with caplog.at_level(logging.WARNING, logger="kubemaas.runtime.llm"):
        assert run_staggered(engine, lm) == want
    assert engine.traced is not None and engine.traced.failed
    assert engine.traced.replays == 0
    assert "decode steps stay eager: the trace failed" in caplog.text
