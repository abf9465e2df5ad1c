"""Decode rows of very different context widths attended in groups (packing.decode_groups,
PagedStep.decode_groups): when rows are split, that each row attends exactly as in one padded
call, and that the engine's steps with such a split answer as without it."""

from __future__ import annotations

import dataclasses
from itertools import count

import torch
from tests.unit.llm_rows import decoding

from kubemaas_runtime.llm.attention import paged_attention
from kubemaas_runtime.llm.kv_cache import KVStore
from kubemaas_runtime.llm.packing import GROUP_SAVES_BLOCKS, decode_groups, pack
from kubemaas_runtime.llm.scheduler import Sequence

BLOCK = 16


def _decoding(rid: int, context: int, blocks: count) -> Sequence:
    return decoding(rid, context, blocks, BLOCK)


def test_rows_of_similar_contexts_stay_one_call() -> None:
    blocks = count(1)
    rows = [_decoding(i, 40 + 3 * i, blocks) for i in range(16)]
    same, groups = decode_groups(rows, BLOCK)
    assert groups is None and same is rows


def test_one_long_context_no_longer_pads_the_short_rows() -> None:
    blocks = count(1)
    short = [_decoding(i, 60 + i, blocks) for i in range(8)]
    long = _decoding(99, 1040, blocks)
    ordered, groups = decode_groups([short[0], long, *short[1:]], BLOCK)
    assert groups == [(8, 5), (1, 65)]
    assert ordered == [*short, long]  # by context, the long row last
    # the padded work the split saves: 9 rows x 65 blocks against 8 x 5 + 65
    assert GROUP_SAVES_BLOCKS <= 9 * 65 - (8 * 5 + 65)


def test_a_split_too_small_to_pay_for_its_calls_is_not_made() -> None:
    blocks = count(1)
    rows = [_decoding(1, 20, blocks), _decoding(2, 300, blocks)]
    _, groups = decode_groups(rows, BLOCK)
    assert groups is None  # 2 x 19 blocks padded against 2 + 19: 17 blocks saved


def test_grouped_rows_attend_as_in_one_padded_call() -> None:
    torch.manual_seed(0)
    blocks = count(1)
    rows = [_decoding(i, c, blocks) for i, c in
            enumerate([700, 50, 33, 1200, 64, 20, 410, 47])]
    ordered, groups = decode_groups(rows, BLOCK)
    assert groups is not None and len(groups) >= 3
    store = KVStore(1, next(blocks), BLOCK, 2, 8, torch.float32, torch.device("cpu"))
    store.keys[0].normal_()
    store.values[0].normal_()
    packed = pack(ordered, [], store, BLOCK, groups)
    assert packed.paged.decode_groups == groups
    assert packed.sampled == ordered
    query = torch.randn(1, 4, len(rows), 8)

    def attend(step: object) -> torch.Tensor:
        out, _ = paged_attention(None, query, store.keys[0], store.values[0], None,
                                 scaling=8 ** -0.5, kubemaas_step=step)
        return out

    grouped = attend(packed.paged)
    padded = attend(dataclasses.replace(packed.paged, decode_groups=None))
    assert grouped.shape == padded.shape == (1, len(rows), 4, 8)
    torch.testing.assert_close(grouped, padded, rtol=1e-5, atol=1e-6)


def test_a_grouped_step_moved_to_another_device_keeps_its_groups() -> None:
    blocks = count(1)
    rows = [_decoding(i, c, blocks) for i, c in enumerate([50, 40, 1100])]
    ordered, groups = decode_groups(rows, BLOCK)
    store = KVStore(1, next(blocks), BLOCK, 1, 8, torch.float32, torch.device("cpu"))
    moved = pack(ordered, [], store, BLOCK, groups).paged.to(torch.device("meta"))
    assert moved.decode_groups == groups and moved.decode_blocks is not None
    assert moved.decode_blocks.device.type == "meta"
