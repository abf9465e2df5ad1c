"""Prompt chunks attended together (attention.ChunkBatch, packing.attention_units): which chunks
share a call, that a shared call attends every chunk exactly as the chunk's own call does, and
the in-process bench that compares the two (bench/llm/prompt_steps.py)."""

from __future__ import annotations

import dataclasses
import json
import sys
from itertools import count
from pathlib import Path

import pytest
import torch

from kubemaas_runtime.llm import attention
from kubemaas_runtime.llm.attention import Chunk, ChunkBatch, PagedStep, paged_attention
from kubemaas_runtime.llm.detok import Detokenizer
from kubemaas_runtime.llm.kv_cache import KVStore
from kubemaas_runtime.llm.packing import ALONE_FROM, attention_units, pack
from kubemaas_runtime.llm.sampling import SamplingParams
from kubemaas_runtime.llm.scheduler import Sequence

BLOCK = 16


def _seq(rid: int, prompt_len: int, computed: int, blocks: count) -> Sequence:
    s = Sequence(rid, [(rid * 7 + i) % 50 + 1 for i in range(prompt_len)],
                 SamplingParams(max_tokens=4), sink=lambda _: None, detok=Detokenizer(None))
    s.computed = computed
    s.blocks = [next(blocks) for _ in range(-(-prompt_len // BLOCK))]
    return s


def _chunk(start: int, length: int, offset: int = 0) -> Chunk:
    return Chunk(start, length, offset, torch.arange(-(-(offset + length) // BLOCK)))


def test_short_chunks_of_similar_size_share_a_call_and_long_ones_attend_alone() -> None:
    a, b, c = _chunk(0, 40), _chunk(40, 35), _chunk(75, 38, offset=10)
    long = _chunk(113, ALONE_FROM)
    d, tiny = _chunk(113 + ALONE_FROM, 60), _chunk(173 + ALONE_FROM, 2)
    units = attention_units([a, b, c, long, d, tiny], BLOCK)
    assert [type(u) for u in units] == [ChunkBatch, Chunk, Chunk, Chunk]
    # a 2-token chunk beside a 60-token one would waste too much
    assert all(u is c for u, c in zip(units[1:], [long, d, tiny], strict=True))
    batch = units[0]
    assert isinstance(batch, ChunkBatch)
    assert batch.blocks.shape == (3, 3) and batch.mask.shape == (3, 1, 40, 3 * BLOCK)
    assert batch.real.numel() == 40 + 35 + 38
    # a padding query repeats its chunk's last token, so no mask row is empty
    assert batch.rows.view(3, 40)[1, 35:].tolist() == [74] * 5
    assert bool(batch.mask.any(-1).all())
    # the third chunk's first query (position 10) sees the 10 cached keys and itself
    assert batch.mask[2, 0, 0].nonzero().flatten().tolist() == list(range(11))


@pytest.mark.parametrize("heads,kv_heads,layout", [(4, 2, "sdpa-gqa"), (4, 4, "sdpa-gqa"),
                                                     (8, 2, "grouped-rows")])
@pytest.mark.parametrize("softcap", [None, 2.0])  # Gemma 2's soft-capped scores
def test_a_shared_call_attends_each_chunk_as_its_own_call(
        heads: int, kv_heads: int, layout: str, softcap: float | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # grouped-rows: the layout chunk batches take on CUDA (attention.GROUPED_ROWS_ON), here on CPU
    on = {"cpu"} if layout == "grouped-rows" else set()
    monkeypatch.setattr(attention, "GROUPED_ROWS_ON", on)
    torch.manual_seed(0)
    blocks = count(1)
    decoding = _seq(1, 20, 19, blocks)
    # (prompt length, tokens already cached, tokens read this step)
    reads = [(40, 0, 40), (46, 16, 30), (33, 0, 33), (300, 0, ALONE_FROM + 20), (37, 0, 37),
             (44, 0, 44), (5, 0, 5), (48, 32, 16)]
    prefill = [(_seq(2 + i, n, done, blocks), step) for i, (n, done, step) in enumerate(reads)]
    store = KVStore(1, next(blocks), BLOCK, kv_heads, 8, torch.float32, torch.device("cpu"))
    store.keys[0].normal_()
    store.values[0].normal_()
    packed = pack([decoding], prefill, store, BLOCK)
    assert packed.paged.units is not None
    assert sum(isinstance(u, ChunkBatch) for u in packed.paged.units) >= 2
    query = torch.randn(1, heads, packed.input_ids.shape[1], 8)

    def attend(step: PagedStep, cap: float | None = softcap) -> torch.Tensor:
        out, _ = paged_attention(None, query, store.keys[0], store.values[0], None,
                                 scaling=8 ** -0.5, kubemaas_step=step, softcap=cap)
        return out

    alone = attend(dataclasses.replace(packed.paged, units=None))
    if softcap is not None:  # the cap is applied: it changes the answers
        assert not torch.allclose(alone, attend(packed.paged, None), rtol=1e-3, atol=1e-3)
    shared = attend(packed.paged)
    assert shared.shape == alone.shape == (1, packed.input_ids.shape[1], heads, 8)
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-5)


def test_a_step_moved_to_another_device_keeps_its_units() -> None:
    a, b, long = _chunk(0, 20), _chunk(20, 24), _chunk(44, ALONE_FROM)
    store = KVStore(1, 1, BLOCK, 1, 8, torch.float32, torch.device("cpu"))
    step = PagedStep(store, BLOCK, torch.arange(44 + ALONE_FROM), chunks=[a, b, long],
                     units=attention_units([a, b, long], BLOCK))
    moved = step.to(torch.device("meta"))
    assert moved.units is not None and isinstance(moved.units[0], ChunkBatch)
    assert moved.units[0].mask.device.type == "meta"
    assert moved.units[1] is moved.chunks[2] and moved.chunks[2].blocks.device.type == "meta"


def test_the_prompt_steps_bench_times_both_paths_of_the_same_step(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "llm"))
    import prompt_steps

    out = tmp_path / "steps.json"
    assert prompt_steps.main(["--work", str(tmp_path), "--prompts", "6", "--decode-rows", "3",
                              "--pairs", "2", "--layouts", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert row["batches"] >= 1 and row["tokens"] > 6 * 30 + 3
    assert row["grouped_ms"] > 0 and row["alone_ms"] > 0 and row["pairs"] == 2
    assert row["max_logit_diff"] < 1e-4  # float32: the same logits up to summation order
    # the two layouts of the chunk batches' grouped-query call, the engine's choice restored
    layouts = doc["layouts"]
    assert layouts["grouped_rows_ms"] > 0 and layouts["sdpa_gqa_ms"] > 0
    assert layouts["max_logit_diff"] < 1e-4
    assert sorted(attention.GROUPED_ROWS_ON) == ["cuda"]


def test_a_short_chunk_alone_beside_decodes_on_a_cpu_is_a_batch_of_one() -> None:
    """Its layout in tensors, so the traced graph of such steps replays it (traced_decode.py);
    alone in its step, long, or on a GPU it keeps its own call."""
    blocks = count(1)
    decoding = _seq(1, 20, 19, blocks)
    short, long = _seq(2, 40, 8, blocks), _seq(3, ALONE_FROM, 0, blocks)
    cpu = KVStore(1, next(blocks), BLOCK, 1, 8, torch.float32, torch.device("cpu"))
    meta = KVStore(1, cpu.keys[0].shape[0] // BLOCK, BLOCK, 1, 8, torch.float32,
                   torch.device("meta"))

    units = pack([decoding], [(short, 32)], cpu, BLOCK).paged.units
    assert units is not None and len(units) == 1 and isinstance(units[0], ChunkBatch)
    assert units[0].real.tolist() == list(range(32))  # no padding: one chunk
    assert units[0].mask.shape == (1, 1, 32, 3 * BLOCK)  # its 8 cached tokens + 32, 3 blocks
    assert pack([], [(short, 32)], cpu, BLOCK).paged.units is None
    assert pack([decoding], [(long, ALONE_FROM)], cpu, BLOCK).paged.units is None
    assert pack([decoding], [(short, 32)], meta, BLOCK).paged.units is None
