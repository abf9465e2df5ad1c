"""The KV budget of a mixed-window model split between its full and windowed groups
(kv_groups.py), and the store whose windowed layers hold their own group's blocks."""

from __future__ import annotations

import pytest
import torch

from kubemaas_runtime.llm.kv_cache import BlockPool, KVStore
from kubemaas_runtime.llm.kv_groups import (
    GroupBlocks,
    grouped_store,
    sequence_blocks,
    sequences_that_fit,
    split_budget,
)
from kubemaas_runtime.llm.sampling import SamplingParams
from kubemaas_runtime.llm.scheduler import Scheduler, Sequence

GIB = 1 << 30
# Gemma 3 4B's attention: 34 layers, every sixth full (5), the others windowed over 1024
# tokens; 4 kv heads of 256, bfloat16
LAYERS, FULL, WINDOW, KV_HEADS, DIM, BS = 34, 5, 1024, 4, 256, 16


def test_a_gemma3_shaped_model_holds_more_8k_sequences_with_two_groups() -> None:
    budget, tokens = 16 * GIB, 8192
    one_pool = budget // KVStore.bytes_per_block(LAYERS, BS, KV_HEADS, DIM, torch.bfloat16)
    before = (one_pool - 1) // -(-tokens // BS)
    layer_block = KVStore.bytes_per_block(1, BS, KV_HEADS, DIM, torch.bfloat16)
    groups = split_budget(budget, LAYERS, LAYERS - FULL, layer_block, tokens, WINDOW, BS)
    after = sequences_that_fit(groups, tokens, WINDOW, BS)
    assert (before, after) == (15, 58)
    spent = (groups.full * FULL + groups.window * (LAYERS - FULL)) * layer_block
    assert spent <= budget


def test_each_group_holds_one_sequence_of_max_model_len() -> None:
    layer_block = KVStore.bytes_per_block(1, BS, 1, 8, torch.float32)
    for layers, windowed in ((6, 5), (4, 2), (3, 1)):
        need = (layers - windowed) * 64 + windowed * 5 + layers  # one sequence, the scratch
        groups = split_budget(need * layer_block, layers, windowed, layer_block, 1024, 64, BS)
        assert groups == GroupBlocks(65, 6)
        assert sequences_that_fit(groups, 1024, 64, BS) == 1
        assert split_budget((need - 1) * layer_block, layers, windowed, layer_block,
                            1024, 64, BS).full < 65


def test_short_sequences_hold_as_many_blocks_in_each_group() -> None:
    assert sequence_blocks(100, 64, BS) == (7, 5)
    assert sequence_blocks(40, 64, BS) == (3, 3)
    assert sequence_blocks(8192, 1024, BS) == (512, 65)


def test_two_groups_need_layers_of_each_kind() -> None:
    with pytest.raises(ValueError):
        split_budget(GIB, 4, 4, 1024, 1024, 64, BS)
    with pytest.raises(ValueError):
        split_budget(GIB, 4, 0, 1024, 1024, 64, BS)


def test_the_store_sizes_each_layer_by_its_group_within_the_budget() -> None:
    layer_block = KVStore.bytes_per_block(1, BS, 2, 8, torch.float32)
    budget = 300 * layer_block
    groups = split_budget(budget, 6, 5, layer_block, 512, 48, BS)
    sliding = frozenset({0, 1, 2, 3, 4})
    store = grouped_store(6, sliding, groups, BS, 2, 8, torch.float32, torch.device("cpu"))
    assert [k.shape[0] // BS for k in store.keys] == [groups.window] * 5 + [groups.full]
    assert [v.shape for v in store.values] == [k.shape for k in store.keys]
    assert store.nbytes <= budget
    assert store.nbytes == (5 * groups.window + groups.full) * layer_block
    plain = KVStore(6, 7, BS, 2, 8, torch.float32, torch.device("cpu"))
    assert {k.shape[0] for k in plain.keys} == {7 * BS}


def _admitted(pool: BlockPool, window_pool: BlockPool | None) -> int:
    """How many of 80 waiting 8,191-token prompts the scheduler admits at once."""
    mixed = (WINDOW, (LAYERS - FULL) / LAYERS) if window_pool is not None else None
    scheduler = Scheduler(pool, 256, 8192, mixed=mixed, window_pool=window_pool)
    for i in range(80):
        scheduler.add(Sequence(i, [1] * 8191, SamplingParams(max_tokens=1), sink=print,
                               detok=None))  # type: ignore[arg-type]
    scheduler.schedule()
    return len(scheduler.running)


def test_the_scheduler_admits_as_many_8k_prompts_as_the_split_holds() -> None:
    """Gemma 3 4B-shaped, 16 GiB: the scheduler admits 15 prompts of 8,191 tokens in one
    pool, 58 with two groups (each group keeping a free block per running sequence)."""
    one = BlockPool(16 * GIB // KVStore.bytes_per_block(LAYERS, BS, KV_HEADS, DIM,
                                                        torch.bfloat16), BS)
    groups = split_budget(16 * GIB, LAYERS, LAYERS - FULL,
                          KVStore.bytes_per_block(1, BS, KV_HEADS, DIM, torch.bfloat16),
                          8192, WINDOW, BS)
    assert _admitted(one, None) == 15
    assert _admitted(BlockPool(groups.full, BS), BlockPool(groups.window, BS)) == 58
