"""Two KV groups over one pool of pages (kv_shared.py): the accounting of the units, the
store's strided views, and what a Gemma 3 4B-shaped model holds at once compared with one
pool and with the fixed split (kv_groups.split_budget)."""

from __future__ import annotations

import random

import torch

from kubemaas_runtime.llm.kv_cache import BlockPool, KVStore
from kubemaas_runtime.llm.kv_groups import sequences_that_fit, split_budget
from kubemaas_runtime.llm.kv_shared import SharedPages, SharedStore, shared_pages
from kubemaas_runtime.llm.sampling import SamplingParams
from kubemaas_runtime.llm.scheduler import Scheduler, Sequence

GIB = 1 << 30
# Gemma 3 4B's attention: 34 layers, every sixth full (5), the others windowed over 1024
# tokens; 4 kv heads of 256, bfloat16
LAYERS, FULL, WINDOW, KV_HEADS, DIM, BS = 34, 5, 1024, 4, 256, 16
UNIT = KVStore.bytes_per_block(1, BS, KV_HEADS, DIM, torch.bfloat16)


def _seq(rid: int, tokens: int, max_tokens: int = 1) -> Sequence:
    return Sequence(rid, [1 + rid % 7] * tokens, SamplingParams(max_tokens=max_tokens),
                    sink=print, detok=None)  # type: ignore[arg-type]


def _admitted(pool: BlockPool, window_pool: BlockPool | None, tokens: int) -> int:
    """How many of 600 waiting prompts of ``tokens - 1`` tokens the scheduler admits at once
    (each group keeping a free block per running sequence)."""
    mixed = (WINDOW, (LAYERS - FULL) / LAYERS) if window_pool is not None else None
    scheduler = Scheduler(pool, 1024, 8192, mixed=mixed, window_pool=window_pool)
    for i in range(600):
        scheduler.add(_seq(i, tokens - 1))
    scheduler._admit()
    return len(scheduler.running)


def _three(budget: int) -> tuple[BlockPool, tuple[BlockPool, BlockPool], SharedPages]:
    one = BlockPool(budget // KVStore.bytes_per_block(LAYERS, BS, KV_HEADS, DIM,
                                                      torch.bfloat16), BS)
    groups = split_budget(budget, LAYERS, LAYERS - FULL, UNIT, 8192, WINDOW, BS)
    pages = shared_pages(budget, LAYERS, LAYERS - FULL, UNIT, BS, False)
    return one, (BlockPool(groups.full, BS), BlockPool(groups.window, BS)), pages


def test_a_gemma3_shaped_model_holds_as_many_sequences_as_the_better_of_pool_and_split() -> None:
    """16 GiB, max-model-len 8,192: admitted at once, 8,192-token sequences: one pool 15,
    the split 58, shared pages 58; 256-token sequences: one pool 481, the split 239, shared
    pages 481, held at most; the scheduler, which keeps a spare block per running sequence
    in each group, admits 453, 225 and 457 of them."""
    seen = {}
    for tokens in (8192, 256):
        one, split, pages = _three(16 * GIB)
        seen[tokens] = (_admitted(one, None, tokens), _admitted(*split, tokens),
                        _admitted(pages.full, pages.window, tokens))
    assert seen == {8192: (15, 58, 58), 256: (453, 225, 457)}
    one, _, pages = _three(16 * GIB)
    groups = split_budget(16 * GIB, LAYERS, LAYERS - FULL, UNIT, 8192, WINDOW, BS)
    assert (one.usable // 16, sequences_that_fit(groups, 256, WINDOW, BS)) == (481, 239)
    assert pages.usable // (16 * LAYERS) == 481  # a short sequence: 34 units a block
    assert pages.units * UNIT <= 16 * GIB


def test_a_short_sequence_costs_every_layers_units_and_gives_them_back() -> None:
    pages = SharedPages(200, 2, 6, BS, False)  # 8 layers: 2 full, 6 windowed
    assert (pages.reserved, pages.usable) == (6, 194)
    assert (pages.full.usable, pages.window.usable) == (97, 32)
    full, window = pages.full.allocate(3), pages.window.allocate(3)
    assert pages.held == 3 * 8 and pages.usage() == 24 / 194
    assert max(full) == 99 and min(window) == 1  # from the two ends
    # (the windowed blocks' 18 units span 9 full blocks; the full ones' 6 units, 1 windowed)
    assert (pages.full.free, pages.window.free) == (85, 28)
    pages.full.release(full)
    pages.window.release(window)
    assert pages.held == 0 and (pages.full.free, pages.window.free) == (97, 32)


def test_windowed_units_given_back_serve_the_full_group() -> None:
    pages = SharedPages(6 + 8 * 6 + 2, 2, 6, BS, False)
    window = pages.window.allocate(pages.window.free)
    assert pages.window.free == 0 and pages.full.free == 1  # the last two units alone
    pages.window.release(window[:2])  # slid out of the window
    taken = pages.full.allocate(pages.full.free)
    assert len(taken) == 1 + 2 * 3  # six units each window block gave: three full blocks
    assert pages.held == 2 + 6 * 6 + 2 * len(taken) - 2


def test_cached_blocks_of_one_group_go_when_the_other_needs_their_units() -> None:
    pages = SharedPages(6 + 6 * 4, 2, 6, BS, True)
    tokens = list(range(4 * BS + 1))
    blocks = pages.window.allocate(4)
    assert pages.window.register(blocks, tokens, 0, 4 * BS) == 4
    pages.window.release(list(blocks))
    assert pages.held == 0 and pages.window.free == 4 and pages.full.free == 12
    assert pages.window.lookup(tokens) == blocks  # cached: a prefix hit
    pages.window.release(list(blocks))
    taken = pages.full.allocate(12)  # every unit: the cached windowed blocks are evicted
    assert len(set(taken)) == 12 and pages.window.free == 0
    assert pages.window.lookup(tokens) == []
    pages.full.release(taken)
    assert pages.window.unused() == [1, 2, 3, 4]


def test_the_store_gives_each_block_of_each_layer_its_own_rows() -> None:
    """Every layer of a block held by either group reads back what was written there, while
    the other group's blocks are written."""
    pages = SharedPages(6 + 8 * 5 + 1, 2, 6, 4, False)
    sliding = frozenset({0, 1, 3, 4, 5, 7})
    store = SharedStore(8, sliding, pages, 4, 1, 2, torch.float32, torch.device("cpu"))
    assert store.nbytes == 2 * pages.units * 4 * 2 * 4
    assert [k.shape[0] // 4 for k in store.keys] == [
        pages.window.num_blocks if i in sliding else pages.full.num_blocks for i in range(8)]
    full, window = pages.full.allocate(8), pages.window.allocate(4)
    assert pages.full.free == 0 and pages.window.free == 0

    def rows(block: int) -> torch.Tensor:
        return torch.arange(block * 4, block * 4 + 4)
    for layer in range(8):
        for block in window if layer in sliding else full:
            store.keys[layer].index_copy_(0, rows(block), torch.full((4, 1, 2), layer * 100.
                                                                     + block))
    for layer in range(8):
        for block in window if layer in sliding else full:
            assert torch.all(store.keys[layer][rows(block)] == layer * 100. + block)


def test_the_scheduler_waits_when_each_group_has_room_but_not_both() -> None:
    """Room for a prompt's full blocks and for its windowed blocks, not for both at once:
    the prompt waits (nothing is overcommitted, no error) and is admitted once a running
    sequence is gone."""
    pages = SharedPages(6 + 6 * 6, 2, 6, BS, False)  # 36 units past the scratch
    scheduler = Scheduler(pages.full, 8, 4096, mixed=(BS, 0.75), window_pool=pages.window)
    # 3 full blocks and 2 windowed (18 units), then 4 full and 2 windowed (20 units)
    first, second = _seq(1, 3 * BS - 1), _seq(2, 4 * BS - 1)
    scheduler.add(first)
    scheduler.add(second)
    scheduler._admit()
    assert scheduler.running == [first] and pages.held == 3 * 2 + 2 * 6
    assert (pages.full.free, pages.window.free) == (9, 3)  # each has room, not both
    assert scheduler.waiting[0] is second
    scheduler.remove(first)
    scheduler._admit()
    assert scheduler.running == [second]


def _serve(seed: int, unpinned: list[bool]) -> None:
    """Random requests (prompts of 1s and 2s, so prefixes are shared) over a line that holds
    one sequence of max-model-len and a few units more, run to their ends; every block is
    free afterwards. ``unpinned``: what each fallback to packed blocks answered."""
    rnd = random.Random(seed)
    full, windowed = rnd.choice([(1, 3), (2, 5), (3, 2), (5, 29)])
    window, max_len = rnd.choice([4, 8, 13]), rnd.choice([40, 64])
    need = -(-max_len // 4)
    live = min(need, -(-window // 4) + 1)
    pages = SharedPages(max(full, windowed) + (need + 1) * full + (live + 1) * windowed
                        + rnd.choice([0, 3, 20]), full, windowed, 4, True)
    scheduler = Scheduler(pages.full, 6, rnd.choice([8, 256]), mixed=(window, 0.5),
                          window_pool=pages.window)
    unpin = scheduler._unpin
    scheduler._unpin = lambda: unpinned.append(unpin()) or unpinned[-1]  # type: ignore
    pending = []
    for i in range(rnd.choice([1, 3, 12])):
        n = rnd.randint(1, max_len - 2)
        pending.append(Sequence(i, [rnd.choice([1, 2]) for _ in range(n)],
                                SamplingParams(max_tokens=rnd.randint(1, max_len - n - 1)),
                                sink=print, detok=None))  # type: ignore[arg-type]
    for _ in range(5000):
        if pending and rnd.random() < 0.5:
            scheduler.add(pending.pop(0))
        step = scheduler.schedule()
        for s, n in [(s, 1) for s in step.decode] + step.prefill:
            s.computed += n
            if s.computed == len(s.ids):
                s.ids.append(rnd.choice([1, 2]))
                s.output.append(1)
            s.registered = pages.full.register(s.blocks, s.ids, s.registered, s.computed)
            assert s.window_blocks is not None
            s.window_registered = pages.window.register(s.window_blocks, s.ids,
                                                        s.window_registered, s.computed)
            scheduler.slide(s)
            if len(s.output) >= s.params.max_tokens:
                scheduler.remove(s)
        if not (pending or scheduler.running or scheduler.waiting):
            break
    assert not (pending or scheduler.running or scheduler.waiting), seed
    assert pages.held == 0 and not any(pages.full._refs) and not any(pages.window._refs)
    assert (pages.full.free, pages.window.free) == (pages.full.usable, pages.window.usable)


def test_every_request_ends_and_gives_every_unit_back() -> None:
    """120 random runs, each in a line a little larger than one sequence of max-model-len
    needs: every request is served to its end and every unit is free again. In some, a
    sequence alone found no room, its own blocks between the two ends: it was read again
    with the blocks taken nearest each end (Scheduler._unpin, SharedPages.compact)."""
    unpinned: list[bool] = []
    for seed in range(120):
        _serve(seed, unpinned)
    assert unpinned and all(unpinned)
