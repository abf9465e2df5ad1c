"""Decode steps through CUDA graphs' fixed, padded inputs (llm/cuda_graphs.py), in-process on the
CPU with ``capture=False``: the same bucketing, padding and shared logits without the capture
itself (CI has no GPU; bench/llm/gpu.py runs the captured graphs on one). Every decode-only step
of a changing batch gives the eager step's logits, the answers are the eager engine's, warming
every bucket writes nothing but the scratch block, and steps past the gather cap stay eager."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from kubemaas_runtime.llm import cuda_graphs
from kubemaas_runtime.llm.attention import PagedStep
from kubemaas_runtime.llm.cuda_graphs import GraphedDecode, bucket, buckets
from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import LanguageModel, load_hf
from kubemaas_testbed.llm_models import build_llm

from .llm_staggered import run_staggered

# as on a GPU: no decode lanes (a CPU engine's; CUDA graphs read the pools)
CONFIG = EngineConfig(kv_cache_bytes=8 << 20, max_model_len=256, max_num_seqs=8,
                      max_num_batched_tokens=32, block_size=8, traced_decode=False,
                      decode_lanes=False)


def graphed_engine(lm: LanguageModel, capture: bool = False) -> tuple[Engine, GraphedDecode]:
    assert lm.stack is not None
    engine = Engine(lm, CONFIG)
    graphed = GraphedDecode(lm.stack, engine.store, CONFIG.block_size, lm.vocab_size,
                            CONFIG.max_num_seqs, capture=capture, sliding=lm.sliding,
                            window=lm.window)  # (as the engine builds it on a GPU)
    engine._model_step = graphed
    return engine, graphed


def test_buckets_are_powers_of_two() -> None:
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 64, 65)] == [1, 2, 4, 4, 8, 8, 16, 64, 128]
    assert buckets(1) == [1]
    assert buckets(6) == [1, 2, 4, 8]
    assert buckets(64) == [1, 2, 4, 8, 16, 32, 64]


def test_padded_decode_steps_give_the_eager_logits(tiny_llama: Path) -> None:
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu", packed_linear=False)
    assert lm.stack is not None
    engine, graphed = graphed_engine(lm)
    direct = lm.stack
    shapes: list[tuple[int, int]] = []

    def both(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
             step: PagedStep) -> torch.Tensor:
        expected = direct(input_ids, position_ids, keep, step)
        logits = graphed(input_ids, position_ids, keep, step)
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
        if not step.chunks:
            assert step.decode_blocks is not None
            shapes.append((step.decode_rows, step.decode_blocks.shape[1]))
        return expected

    engine._model_step = both
    run_staggered(engine, lm)
    assert not graphed.failed
    assert graphed.replays == len(shapes)
    assert len({rows for rows, _ in shapes}) >= 4  # batches of many sizes ...
    assert any(bucket(r) != r for r, _ in shapes)  # ... some of them padded
    assert any(bucket(w) != w for _, w in shapes)  # and widened block tables
    assert set(graphed._buckets) == {(bucket(r), bucket(w)) for r, w in shapes}


@pytest.mark.parametrize("family", ["llama", "phi3", "olmo2", "gemma", "gemma2", "gemma3_text",
                                    "granite"])
def test_the_engine_answers_as_eager_through_padded_steps(family: str, tiny_llama: Path,
                                                          tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model_dir = tiny_llama if family == "llama" else build_llm(tmp_path / family, family=family)
    lm = load_hf(model_dir, device="cpu")
    want = run_staggered(Engine(lm, CONFIG), lm)
    engine, graphed = graphed_engine(lm)
    assert run_staggered(engine, lm) == want
    assert graphed.replays > 20


def test_warming_every_bucket_writes_only_the_scratch_block(tiny_llama: Path) -> None:
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    engine, graphed = graphed_engine(lm)
    widths = engine.pool.blocks_for(CONFIG.max_model_len)
    pools = engine.store.keys + engine.store.values
    for pool in pools:
        pool[0].fill_(7.0)  # the slot padding rows write
    graphed.warm(CONFIG.max_num_seqs, widths)
    assert set(graphed._buckets) == {(r, w) for r in buckets(CONFIG.max_num_seqs)
                                     for w in buckets(widths)}
    for pool in pools:
        assert not (pool[0] == 7.0).any()
        assert not pool[1:].any()
    want = run_staggered(Engine(lm, CONFIG), lm)
    assert run_staggered(engine, lm) == want  # the warmed buckets then serve
    assert graphed.replays > 20


def test_steps_past_the_gather_cap_run_eagerly(tiny_llama: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    want = run_staggered(Engine(lm, CONFIG), lm)
    slot = 2 * lm.kv_heads * lm.head_dim * 4  # float32 keys and values of one slot
    monkeypatch.setattr(cuda_graphs, "GATHER_CAP", slot * 4 * 4 * CONFIG.block_size)
    engine, graphed = graphed_engine(lm)  # graphs up to 4 rows x 4 blocks
    assert graphed.graphable(4, 4) and not graphed.graphable(5, 4)
    assert not graphed.graphable(1, 17)
    assert run_staggered(engine, lm) == want
    assert graphed.replays > 0
    assert all(r * w <= 16 for r, w in graphed._buckets)


def test_a_capture_that_fails_leaves_the_engine_eager(tiny_llama: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Capturing on a machine without CUDA fails at its first call into CUDA: the warm-up gives
    up without raising, every step runs eagerly on its own (unpadded) tensors, answers as the
    eager engine does, and the log says why."""
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    want = run_staggered(Engine(lm, CONFIG), lm)
    engine, graphed = graphed_engine(lm, capture=True)
    with caplog.at_level(logging.WARNING, logger="kubemaas.runtime.llm"):
        graphed.warm(CONFIG.max_num_seqs, 4)
        assert graphed.failed and not graphed._buckets
        assert run_staggered(engine, lm) == want
    assert graphed.replays == 0
    assert "decode steps stay eager: a capture failed" in caplog.text
    fresh, lazily = graphed_engine(lm, capture=True)  # a first decode step's capture fails too
    assert run_staggered(fresh, lm) == want
    assert lazily.failed and lazily.replays == 0
