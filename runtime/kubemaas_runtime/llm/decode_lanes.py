"""Decode rows' keys and values kept contiguous, one lane per row, beside the paged pool (CPU).

A decode step's attention reads every row's whole context. From the paged pool that takes a
gather: each layer copies the rows' blocks into one tensor ``[B, T, kv_heads, d]``, and
attention then reads that copy through a transposed view. On a CPU the copy and the strided
read cost more than the attention's own arithmetic: one layer of the small benchmark model
(16 rows of 560 tokens, 8 KV heads of 64) took 5.2 ms gathering and attending against 1.9 ms
attending over the same keys and values laid out ``[B, kv_heads, T, d]`` already (at 1,040
tokens 11.1 against 4.2 ms; one core, heap.py's settings).

So on a CPU the engine keeps a second copy of the decode rows' keys and values, laid out for
attention: per layer ``[lanes, kv_heads, capacity, d]``, row ``i`` of a step in lane ``i``. A
step writes its new token's keys and values to the pool (which stays the cache of record:
prefix caching, preemption, prompt chunks read it) and to the row's lane, and the decode
attention reads ``lanes[:B, :, :T]`` in place. Between steps ``arrange`` keeps the lanes in
step with the rows: a row that stops decoding frees its lane (the last lane moves into the
hole: one row's copy, not a shift of every row), a new row's lane is filled once from the pool,
and the lanes grow or shrink in whole ``GRANULE``s of tokens.

The copy costs memory: up to ``max_bytes`` (the engine gives it as much as the KV cache). A
step whose rows do not fit runs from the pool, as do steps whose rows attend in groups of
similar width (packing.decode_groups: there padding every row to the longest would cost more)
and steps that read little (``LANES_FROM_BYTES``); such a step gives the lanes up.
"""

from __future__ import annotations

from collections.abc import Sequence as Rows
from typing import Any

import torch

from .kv_cache import KVStore

# Lane capacity grows and shrinks in steps of about this many tokens (whole blocks): a resize
# copies every lane, so it must be rare.
GRANULE = 256
# Lanes are allocated for a multiple of this many rows, for the same reason.
ROWS_STEP = 4
# Steps whose decode rows read fewer bytes per layer than this (keys and values, every row
# padded to the widest) read the pool. Attention over the lanes reads them from memory, while
# the pool's gather is a streaming copy that leaves them in the cache for the attention: while
# a layer's copy stays cache-sized that costs less. One thread, bench/llm/decode_lanes.py, a
# decode step over the lanes against the pool's: on the small benchmark model (4 KiB per token
# and layer) with 16 rows 1.07x at 80 tokens, 1.03x at 144 (9 MiB a layer), 0.96x at 176
# (11 MiB), 0.90x at 272, 0.61x at 560 and 0.50x at 1,040; with 8 rows 1.03x at 208, 1.00x at
# 336 (10.5 MiB), 0.90x at 560; on the tiny one (512 bytes) with 16 rows 1.03x at 1,040
# tokens (8 MiB), 0.97x at 1,600 (12.5 MiB), 0.90x at 2,000.
LANES_FROM_BYTES = 12 << 20


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class DecodeLanes:
    """The lanes of one engine (its engine thread alone uses them). ``layers``: the layers
    whose decode attention reads the lanes (None: every layer); a model whose layers mix a
    sliding window and full attention keeps lanes for its full layers alone (its windowed
    layers read their windows' blocks from the pool: attention.PagedStep.window_decode_blocks),
    the others' entries in ``keys`` and ``values`` empty tensors."""

    def __init__(self, store: KVStore, block_size: int, max_bytes: int,
                 layers: Rows[int] | None = None) -> None:
        self.store = store
        self.block_size = block_size
        self.max_bytes = max_bytes
        self.granule = _round_up(GRANULE, block_size)  # whole blocks: lanes[:, :, :T] exists
        pool = store.keys[0]
        self.layers = list(range(len(store.keys))) if layers is None else sorted(layers)
        if not self.layers:
            raise ValueError("decode lanes for no layer")
        self._held = frozenset(self.layers)
        self.token_bytes = 2 * len(self.layers) * pool.shape[1] * pool.shape[2] \
            * pool.element_size()
        # (one empty tensor in the places of the layers not held: a traced graph's inputs)
        self._none = pool.new_empty(0)
        self.keys: list[torch.Tensor] = []    # per layer [lanes, kv_heads, capacity, d]
        self.values: list[torch.Tensor] = []
        self.rows: list[Any] = []  # lane i holds rows[i]'s first held[i] tokens
        self.held: list[int] = []
        self.filled = 0  # lanes filled from the pool (rows that joined, or fell out of step)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def arrange(self, decode: Rows[Any]) -> list[Any] | None:
        """``decode`` (sequences with ``blocks`` and ``computed``) in lane order, each lane
        holding its row's ``computed`` tokens; None, with the lanes given back, when the rows
        would not fit ``max_bytes`` or would read less than ``LANES_FROM_BYTES`` a layer."""
        tokens = max(s.computed for s in decode) + 1
        reads = len(decode) * tokens * self.token_bytes // len(self.layers)
        shape = self._shape_for(len(decode), tokens) if reads >= LANES_FROM_BYTES else None
        if shape is None:
            self.clear()
            return None
        wanted = {id(s) for s in decode}
        kept = [i for i, (s, n) in enumerate(zip(self.rows, self.held, strict=True))
                if id(s) in wanted and n == s.computed]
        self._compact(kept)
        if shape != self._shape():
            self._resize(*shape)
        present = {id(s) for s in self.rows}
        for seq in decode:
            if id(seq) not in present:
                self._fill(len(self.rows), seq)
                self.rows.append(seq)
                self.held.append(seq.computed)
        return list(self.rows)

    def for_step(self, decode: Rows[Any], grouped: bool) -> list[Any] | None:
        """The decode rows in lane order when the step reads them from the lanes (``arrange``);
        else None, the lanes given up. A step whose rows attend in groups reads the pool, and
        a row that misses a step is filled again from the pool when it comes back (a
        preempted one may come back with other keys and values)."""
        if decode and not grouped:
            arranged = self.arrange(decode)
            if arranged is not None:
                return arranged
        self.clear()
        return None

    def advanced(self) -> None:
        """The step wrote one token to every lane and the rows counted it."""
        self.held = [s.computed for s in self.rows]

    def clear(self) -> None:
        self.keys, self.values, self.rows, self.held = [], [], [], []

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor,
              positions: torch.Tensor) -> None:
        """The decode rows' new ``keys``/``values`` [B, kv_heads, d] at ``positions`` [B]
        (nothing for a layer whose lanes are not held)."""
        if layer not in self._held:  # (a Python set: a traced graph reads no size here)
            return
        rows, heads, dim = keys.shape
        where = positions.view(rows, 1, 1, 1).expand(rows, heads, 1, dim)
        self.keys[layer][:rows].scatter_(2, where, keys.unsqueeze(2))
        self.values[layer][:rows].scatter_(2, where, values.unsqueeze(2))

    def _shape(self) -> tuple[int, int]:
        if not self.keys:
            return 0, 0
        held = self.keys[self.layers[0]]
        return held.shape[0], held.shape[2]

    def _shape_for(self, rows: int, tokens: int) -> tuple[int, int] | None:
        """(lanes, capacity) for ``rows`` rows of up to ``tokens`` tokens: the current ones
        while they suffice and are not over twice what is needed (so that a row joining or
        leaving, or the longest one ending, does not copy every lane each time), else the
        need rounded up; None: over the budget."""
        have_rows, have_tokens = self._shape()
        need = (_round_up(rows, ROWS_STEP), _round_up(tokens, self.granule))
        lanes = have_rows if rows <= have_rows <= 2 * need[0] else need[0]
        capacity = have_tokens if tokens <= have_tokens <= 2 * need[1] else need[1]
        for shape in ((lanes, capacity), need, (rows, need[1])):
            if shape[0] * shape[1] * self.token_bytes <= self.max_bytes:
                return shape
        return None

    def _compact(self, kept: list[int]) -> None:
        """Keep the ``kept`` lanes (indexes, ascending) in lanes 0..len(kept)-1: each lane past
        that moves into a hole below it."""
        size = len(kept)
        keep = set(kept)
        holes = [i for i in range(size) if i not in keep]
        movers = [i for i in kept if i >= size]
        for hole, mover in zip(holes, movers, strict=True):
            n = self.held[mover]
            for pool in (self.keys, self.values):
                for layer in self.layers:
                    pool[layer][hole, :, :n] = pool[layer][mover, :, :n]
            self.rows[hole], self.held[hole] = self.rows[mover], self.held[mover]
        del self.rows[size:], self.held[size:]

    def _resize(self, lanes: int, capacity: int) -> None:
        """New lane tensors, the kept rows' tokens copied over (layer by layer: the old and
        the new lanes are both held for one layer at a time at most, beyond the total)."""
        pool = self.store.keys[0]
        shape = (lanes, pool.shape[1], capacity, pool.shape[2])
        kept, used = len(self.rows), max(self.held, default=0)
        held = self._held
        for tensors in (self.keys, self.values):
            for layer in range(len(self.store.keys)):
                # zeros: attention multiplies the masked positions' values by 0, and a NaN in
                # uninitialized memory would survive that
                new = torch.zeros(shape, dtype=pool.dtype, device=pool.device) \
                    if layer in held else self._none
                if layer < len(tensors):
                    if kept and layer in held:
                        new[:kept, :, :used] = tensors[layer][:kept, :, :used]
                    tensors[layer] = new
                else:
                    tensors.append(new)

    def _fill(self, lane: int, seq: Any) -> None:
        """Lane ``lane`` from the pool: ``seq``'s computed tokens."""
        n, bs = seq.computed, self.block_size
        if n:
            blocks = torch.tensor(seq.blocks[:-(-n // bs)], dtype=torch.long)
            for pools, lanes in ((self.store.keys, self.keys), (self.store.values, self.values)):
                for layer in self.layers:
                    pool = pools[layer]
                    rows = pool.view(-1, bs, *pool.shape[1:]).index_select(0, blocks)
                    lanes[layer][lane, :, :n] = rows.view(-1, *pool.shape[1:])[:n].transpose(0, 1)
        self.filled += 1
