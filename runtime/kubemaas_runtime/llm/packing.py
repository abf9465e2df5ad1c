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
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read slots [B, T] (the scratch slot 0 past a row's context), the mask [B, 1, 1, T] and
    each row's write slot [B]; a few tensor operations whatever the batch (this runs every
    step, and on small models a step is a few milliseconds)."""
    ctx = torch.tensor([s.computed + 1 for s in decode])
    t_max = int(ctx.max())
    width = -(-t_max // block_size)
    table = torch.tensor([s.blocks[:width] + [0] * (width - len(s.blocks[:width]))
                          for s in decode], dtype=torch.long)
    pos = torch.arange(t_max)
    valid = pos[None, :] < ctx[:, None]
    read = torch.where(valid, table[:, pos // block_size] * block_size + pos % block_size, 0)
    write = read[torch.arange(len(decode)), ctx - 1]
    return read, valid[:, None, None, :], write


def pack(decode: list[Sequence], prefill: list[tuple[Sequence, int]], store: KVStore,
         block_size: int) -> PackedStep:
    ids: list[int] = []
    positions: list[int] = []
    writes: list[torch.Tensor] = []
    keep: list[int] = []
    sampled: list[Sequence] = []
    decode_read = decode_mask = None
    if decode:
        decode_read, decode_mask, decode_writes = _decode_tables(decode, block_size)
        writes.append(decode_writes)
        keep.extend(range(len(decode)))
        sampled.extend(decode)
        ids.extend(seq.ids[seq.computed] for seq in decode)
        positions.extend(seq.computed for seq in decode)
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
    paged = PagedStep(store, torch.cat(writes) if len(writes) > 1 else writes[0],
                      len(decode), decode_read, decode_mask, chunks)
    return PackedStep(torch.tensor([ids]), torch.tensor([positions]),
                      torch.tensor(keep or [len(ids) - 1]), sampled, paged)
