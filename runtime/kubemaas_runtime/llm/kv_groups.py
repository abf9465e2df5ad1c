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
them: the split serves long contexts, which is where the single pool ran short.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kv_cache import KVStore


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
