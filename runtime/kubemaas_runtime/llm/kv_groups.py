"""The KV budget of a model whose layers mix a sliding window and full attention, split
between two KV groups (vLLM's hybrid KV-cache manager: one group per attention type).

With one pool of blocks for every layer, such a model (Gemma 2: every other layer windowed;
Gemma 3: 5 of 6; Qwen2/Qwen3 with ``max_window_layers``) keeps every block of a sequence,
because its full layers read the whole context, though its windowed layers never read
further back than their window. With two groups, the full layers' blocks and the windowed
layers' blocks are apart (each group its own block ids, ``KVStore``'s ``window_layers``), so
the windowed group can give back the blocks that slid out of a sequence's window as a model
windowed on every layer does.

``split_budget`` sizes the groups so that the budget holds as many sequences of
max-model-len as it can: each group gets blocks in proportion to what one such sequence
holds in it (every block of its context in the full group; its window's blocks and the next
in the windowed one, ``Scheduler.live_blocks``). Sequences shorter than the window hold as
many blocks in each group, so under such a split the windowed group is the scarcer one for
them: the split serves long contexts, which is where the single pool ran short. The engine
shares one pool of pages between the groups instead (kv_shared.py: as many short sequences
as one pool, as many long ones as the split); the split stays for comparison
(EngineConfig.kv_shared=False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .kv_cache import BlockPool, KVStore
from .kv_shared import GroupPool, SharedPages, SharedStore, shared_pages

if TYPE_CHECKING:
    from .loader import LanguageModel
    from .scheduler import Scheduler


@dataclass(frozen=True)
class GroupBlocks:
    """The blocks of each group's pool, its scratch block 0 included."""

    full: int
    window: int


def sequence_blocks(tokens: int, window: int, block_size: int) -> tuple[int, int]:
    """The blocks a sequence of ``tokens`` holds at most in the full group and in the
    windowed one (its window's blocks and the next: Scheduler.live_blocks)."""
    full = -(-tokens // block_size)
    return full, min(full, -(-window // block_size) + 1)


def split_budget(budget: int, layers: int, window_layers: int, layer_block_bytes: int,
                 max_model_len: int, window: int, block_size: int) -> GroupBlocks:
    """The two groups' blocks in ``budget`` bytes (``layer_block_bytes``: one block of one
    layer's keys and values), in proportion to one max-model-len sequence's need in each."""
    full_layers = layers - window_layers
    if full_layers < 1 or window_layers < 1:
        raise ValueError("two KV groups need full and windowed layers both")
    full, windowed = sequence_blocks(max_model_len, window, block_size)
    units = budget // layer_block_bytes - layers  # layer-blocks past the two scratch blocks
    if units <= 0:
        return GroupBlocks(1, 1)
    per_sequence = full_layers * full + window_layers * windowed
    full_blocks = units * full // per_sequence
    window_blocks = (units - full_blocks * full_layers) // window_layers
    return GroupBlocks(full_blocks + 1, window_blocks + 1)


def grouped_store(num_layers: int, sliding: frozenset[int], groups: GroupBlocks,
                  block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                  device: torch.device) -> KVStore:
    """The store of a two-group model: its ``sliding`` layers over the windowed group's blocks."""
    return KVStore(num_layers, groups.full, block_size, kv_heads, head_dim, dtype, device,
                   window_layers=sliding, window_blocks=groups.window)


def sequences_that_fit(groups: GroupBlocks, tokens: int, window: int, block_size: int) -> int:
    """How many sequences of ``tokens`` the two groups hold at once (each at its most)."""
    full, windowed = sequence_blocks(tokens, window, block_size)
    return min((groups.full - 1) // full, (groups.window - 1) // windowed)


def model_groups(num_layers: int, sliding: frozenset[int], window: int | None,
                 kv_heads: int, head_dim: int, dtype: torch.dtype, budget: int,
                 block_size: int, max_model_len: int) -> GroupBlocks | None:
    """The two groups of a model whose layers mix a sliding window and full attention (its
    ``sliding`` layers, their ``window``); None for any other model (one pool)."""
    if not sliding or window is None or len(sliding) >= num_layers:
        return None
    layer_block = KVStore.bytes_per_block(1, block_size, kv_heads, head_dim, dtype)
    return split_budget(budget, num_layers, len(sliding), layer_block, max_model_len, window,
                        block_size)


Layout = GroupBlocks | SharedPages | None


def kv_pools(lm: LanguageModel, budget: int, block_size: int, max_model_len: int,
             prefix_caching: bool, grouped: bool, shared: bool = True
             ) -> tuple[BlockPool, BlockPool | None, Layout]:
    """The engine's pool, and with ``grouped`` (a model whose layers mix windows) the windowed
    group's pool and their layout: with ``shared`` one line of pages for both (kv_shared.py),
    else the fixed split; one pool of every layer's blocks otherwise."""
    groups = model_groups(lm.num_layers, lm.sliding, lm.window, lm.kv_heads, lm.head_dim,
                          lm.dtype, budget, block_size, max_model_len) if grouped else None
    if groups is not None and shared:
        pages = shared_pages(budget, lm.num_layers, len(lm.sliding),
                             KVStore.bytes_per_block(1, block_size, lm.kv_heads, lm.head_dim,
                                                     lm.dtype), block_size, prefix_caching)
        return pages.full, pages.window, pages
    if groups is None:
        per_block = KVStore.bytes_per_block(lm.num_layers, block_size, lm.kv_heads,
                                            lm.head_dim, lm.dtype)
        return BlockPool(budget // per_block, block_size, prefix_caching), None, None
    if groups.window < 2:
        raise ValueError(f"a KV cache of {budget} bytes leaves no block for the windowed "
                         f"layers; raise the KV cache memory")
    return (BlockPool(groups.full, block_size, prefix_caching),
            BlockPool(groups.window, block_size, prefix_caching), groups)


def kv_store(lm: LanguageModel, pool: BlockPool, groups: Layout) -> KVStore:
    """The tensors behind ``kv_pools``' pools."""
    if isinstance(groups, SharedPages):
        return SharedStore(lm.num_layers, lm.sliding, groups, pool.block_size, lm.kv_heads,
                           lm.head_dim, lm.dtype, lm.device)
    if groups is None:
        return KVStore(lm.num_layers, pool.num_blocks, pool.block_size, lm.kv_heads,
                       lm.head_dim, lm.dtype, lm.device)
    return grouped_store(lm.num_layers, lm.sliding, groups, pool.block_size, lm.kv_heads,
                         lm.head_dim, lm.dtype, lm.device)


def check_holds_one_sequence(budget: int, max_model_len: int, scheduler: Scheduler) -> None:
    """The KV cache must hold one sequence of max-model-len (a windowed one: its window's
    blocks, Scheduler.live_blocks; with two groups, the windowed group its window's too)."""
    pool = scheduler.pool
    need = pool.blocks_for(max_model_len)
    if scheduler.window is not None:
        need = min(need, scheduler.live_blocks)
    windowed = scheduler.window_pool
    if isinstance(windowed, GroupPool):
        window_need = min(need, scheduler.window_live)
        if not windowed.pages.holds(need, window_need):
            raise ValueError(
                f"a KV cache of {budget} bytes holds {windowed.pages.usable} layer-blocks of "
                f"{pool.block_size} tokens, fewer than one sequence of max-model-len "
                f"{max_model_len} needs ({need} blocks of the full layers, {window_need} of "
                f"the windowed ones, and one spare of each); raise the KV cache memory or "
                f"lower max-model-len")
        return
    if windowed is not None and min(need, scheduler.window_live) > windowed.usable:
        raise ValueError(
            f"a KV cache of {budget} bytes holds {windowed.usable} blocks of "
            f"{pool.block_size} tokens for the windowed layers, fewer than one sequence's "
            f"window needs ({min(need, scheduler.window_live)}); raise the KV cache memory")
    if need > pool.usable:
        raise ValueError(
            f"a KV cache of {budget} bytes holds {pool.usable} blocks of "
            f"{pool.block_size} tokens, fewer than one sequence of max-model-len "
            f"{max_model_len} needs ({need}); raise the KV cache memory or lower "
            f"max-model-len")
