"""The tensors of one engine step: its rows packed into one sequence ``[1, N]``.

Decode rows come first (one token each), then the prefill chunks. Every packed token gets its
position, the slot its keys and values are written to, and (through ``PagedStep``) the slots of
the context it attends to; ``keep`` lists the packed tokens whose logits are sampled: every
decode row and the last token of each chunk that ends its prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import Chunk, PagedStep
from .kv_cache import KVStore
from .scheduler import Sequence


@dataclass
class PackedStep:
    input_ids: torch.Tensor     # [1, N]
    position_ids: torch.Tensor  # [1, N]
    keep: torch.Tensor          # [K] packed indexes whose logits are needed (K >= 1)
    sampled: list[Sequence]     # the sequences those logits are for (may be fewer than K)
    paged: PagedStep


def slots(seq: Sequence, start: int, stop: int, block_size: int) -> torch.Tensor:
    """KV slots of the sequence's positions ``start .. stop``."""
    pos = torch.arange(start, stop)
    table = torch.tensor(seq.blocks[:-(-stop // block_size)], dtype=torch.long)
    return table[pos // block_size] * block_size + pos % block_size


def _decode_tables(decode: list[Sequence], block_size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Read slots [B, T] (the scratch slot 0 past a row's context) and the mask [B, 1, 1, T]."""
    ctx = torch.tensor([s.computed + 1 for s in decode])
    t_max = int(ctx.max())
    read = torch.zeros(len(decode), t_max, dtype=torch.long)
    for i, seq in enumerate(decode):
        read[i, :seq.computed + 1] = slots(seq, 0, seq.computed + 1, block_size)
    mask = torch.arange(t_max)[None, :] < ctx[:, None]
    return read, mask[:, None, None, :]


def pack(decode: list[Sequence], prefill: list[tuple[Sequence, int]], store: KVStore,
         block_size: int) -> PackedStep:
    ids: list[int] = []
    positions: list[int] = []
    writes: list[torch.Tensor] = []
    keep: list[int] = []
    sampled: list[Sequence] = []
    for seq in decode:
        keep.append(len(ids))
        sampled.append(seq)
        ids.append(seq.ids[seq.computed])
        positions.append(seq.computed)
        writes.append(slots(seq, seq.computed, seq.computed + 1, block_size))
    chunks = []
    for seq, n in prefill:
        start, offset = len(ids), seq.computed
        ids.extend(seq.ids[offset:offset + n])
        positions.extend(range(offset, offset + n))
        read = slots(seq, 0, offset + n, block_size)
        writes.append(read[offset:])
        mask = None
        if offset:
            mask = torch.arange(offset + n)[None, :] <= torch.arange(offset, offset + n)[:, None]
        chunks.append(Chunk(start, n, offset, read, mask))
        if offset + n == len(seq.ids):
            keep.append(len(ids) - 1)
            sampled.append(seq)
    paged = PagedStep(store, torch.cat(writes), decode_rows=len(decode), chunks=chunks)
    if decode:
        paged.decode_read, paged.decode_mask = _decode_tables(decode, block_size)
    return PackedStep(torch.tensor([ids]), torch.tensor([positions]),
                      torch.tensor(keep or [len(ids) - 1]), sampled, paged)
