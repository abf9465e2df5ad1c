"""Paged KV cache: a pool of fixed-size blocks per layer, lent to sequences block by block.

Storage is one tensor per layer for keys and one for values, shaped
``[num_blocks * block_size, kv_heads, head_dim]`` (a slot is one token's keys or values). Block 0
is reserved as the scratch block: padded positions of a batch write there and read from there,
masked out of attention. A sequence owns a list of block ids; its token ``i`` lives in slot
``blocks[i // block_size] * block_size + i % block_size``.

``StepCache`` is the view one forward pass sees: transformers' attention layers call
``cache.update(keys, values, layer_idx)`` with the new tokens' keys and values; it writes them into
their slots and returns the gathered keys and values of every row's whole context (right-padded),
which the step's 4-D attention mask restricts to each row's own tokens causally.
"""

from __future__ import annotations

from typing import Any

import torch


class OutOfBlocks(Exception):
    """The pool has no free block left (the scheduler preempts or waits)."""


class BlockPool:
    """Free-list allocator of block ids 1..num_blocks-1 (0 is the scratch block)."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 2:
            raise ValueError("the KV cache needs at least 2 blocks")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free = list(range(num_blocks - 1, 0, -1))  # pop() hands out low ids first

    @property
    def usable(self) -> int:
        return self.num_blocks - 1

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.usable - len(self._free)

    def usage(self) -> float:
        return self.used / self.usable

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfBlocks(f"need {n} blocks, {len(self._free)} free")
        return [self._free.pop() for _ in range(n)]

    def release(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))
        blocks.clear()


class KVStore:
    """The tensors behind the pool: keys and values of every layer."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        slots = num_blocks * block_size
        self.keys = [torch.zeros(slots, kv_heads, head_dim, dtype=dtype, device=device)
                     for _ in range(num_layers)]
        self.values = [torch.zeros(slots, kv_heads, head_dim, dtype=dtype, device=device)
                       for _ in range(num_layers)]

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * block_size * kv_heads * head_dim * itemsize


class StepCache:
    """What one forward pass uses as its ``cache``: writes new keys and values into their slots and
    hands back each row's whole context. Duck-typed to the part of transformers' ``Cache`` that
    the decoder attention layers call."""

    is_compileable = False

    def __init__(self, store: KVStore, write_slots: torch.Tensor, read_slots: torch.Tensor
                 ) -> None:
        self.store = store
        self.write_slots = write_slots  # [batch * new_len]
        self.read_slots = read_slots    # [batch, context_len]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states: [batch, kv_heads, new_len, head_dim]
        b, h, n, d = key_states.shape
        k_pool, v_pool = self.store.keys[layer_idx], self.store.values[layer_idx]
        k_pool.index_copy_(0, self.write_slots, key_states.transpose(1, 2).reshape(b * n, h, d))
        v_pool.index_copy_(0, self.write_slots,
                           value_states.transpose(1, 2).reshape(b * n, h, d))
        keys = k_pool[self.read_slots].transpose(1, 2)  # [batch, kv_heads, ctx, head_dim]
        values = v_pool[self.read_slots].transpose(1, 2)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.read_slots.shape[1])
