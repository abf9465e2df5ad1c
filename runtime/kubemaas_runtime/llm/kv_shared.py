"""One pool of pages for the two KV groups of a model whose layers mix a sliding window and
full attention (--hybrid-kv-cache: kv_groups.py has the groups, scheduler.py their use).

vLLM's hybrid KV-cache manager shares one pool of pages between its groups by making every
group hold as many layers (kv_cache_utils: one page size fits all; Gemma 3's 5 full and 29
windowed layers would be 7 groups of 5, one padded, each with its own block table). Here the
two groups keep one block table each, and their blocks are intervals of one line of *units*
(one unit: one layer's keys and values of one block of tokens): a block of the full group
(``F`` full layers) is units ``[b*F, (b+1)*F)``, a block of the windowed group (``W``
layers) units ``[b*W, (b+1)*W)``. The keys (and values) of every layer live in one tensor of
``units * block_size`` rows; layer ``j`` of its group, token ``o`` of block ``b`` is row
``(b * block_size + o) * width + j``, so each layer's tensor is a strided view (its rows
``j::width``) and the block tables, the slots and the attention are those of two groups.

So a sequence shorter than the window costs ``F + W`` units a block, as one pool's block of
every layer, and the units the windowed group gives back as its blocks slide out of a long
sequence's window serve either group. The full group takes its blocks from the top of the
line and the windowed group from the bottom (empty blocks first, then its own least recently
released cached block, then any block whose units no one references, evicting the cached
blocks there), so the two mostly stay apart. A block of one group can still sit where the
other's would go: ``free`` of each group counts its blocks that could be taken one by one,
and the scheduler, which asks both groups, may find room in each but not in both at once
(it waits, or with nothing else running drops the prefix cache: ``drop_cached``).
"""

from __future__ import annotations

import heapq

import torch

from .kv_cache import BlockPool, KVStore, OutOfBlocks


class GroupPool(BlockPool):
    """One KV group's blocks over the shared ``SharedPages``: ``BlockPool``'s reference
    counts and prefix cache, the units from the line."""

    shares_pages = True

    def __init__(self, pages: SharedPages, width: int, top: bool, block_size: int,
                 prefix_caching: bool) -> None:
        super().__init__(max(2, pages.units // width), block_size, prefix_caching)
        self._free = []  # (unused: the units say which blocks are empty)
        self.pages, self.width, self.top = pages, width, top
        self.busy = [0] * self.num_blocks  # units held by referenced blocks (either group)
        self.dirty = [0] * self.num_blocks  # units held or cached
        self._available = self.num_blocks  # blocks with no busy unit
        self._open = [self._key(b) for b in range(self.num_blocks)]  # busy 0 (lazy heap)
        self._clean = list(self._open)  # dirty 0 (lazy heap)
        heapq.heapify(self._open)
        heapq.heapify(self._clean)
        self._reserved = -(-pages.reserved // width)  # blocks over the scratch units

    def _key(self, block: int) -> int:
        return -block if self.top else block

    def units(self, block: int) -> range:
        return range(block * self.width, (block + 1) * self.width)

    @property
    def usable(self) -> int:
        return self.num_blocks - self._reserved

    @property
    def free(self) -> int:
        return self._available

    def usage(self) -> float:
        return self.pages.usage()

    def unused(self) -> list[int]:
        return [b for b in range(self._reserved, self.num_blocks) if not self.dirty[b]]

    def count(self, block: int, busy: int, dirty: int) -> None:
        """A unit of ``block`` became (``+1``) or stopped being (``-1``) busy or dirty."""
        if block >= self.num_blocks:
            return  # (the line's last units, past this group's last whole block)
        was = self.busy[block]
        self.busy[block] = was + busy
        if was == 0 and busy > 0:
            self._available -= 1
        elif was > 0 and was + busy == 0:
            self._available += 1
            heapq.heappush(self._open, self._key(block))
        if dirty:
            self.dirty[block] += dirty
            if self.dirty[block] == 0:
                heapq.heappush(self._clean, self._key(block))

    def _pop(self, heap: list[int], counts: list[int]) -> int | None:
        while heap:
            block = abs(heapq.heappop(heap))
            if counts[block] == 0:
                return block
        return None

    def allocate(self, n: int) -> list[int]:
        if n > self.free:
            raise OutOfBlocks(f"need {n} blocks, {self.free} free")
        return [self._take() for _ in range(n)]

    def _take(self) -> int:
        block = None if self.pages.compact else self._pop(self._clean, self.dirty)
        if block is not None:
            self.pages.hold(self, block, cached=False)
        elif self._evictable and not self.pages.compact:  # its least recently released
            block, _ = self._evictable.popitem(last=False)
            del self._by_hash[self._hash_of.pop(block)]
            self.pages.hold(self, block, cached=True)
        else:  # units no one references: the other group's cached blocks there go
            block = self._pop(self._open, self.busy)
            if block is None:
                raise OutOfBlocks("no block free")
            self.pages.evict_under(self, block)
            self.pages.hold(self, block, cached=False)
        self._refs[block] = 1
        return block

    def _retire(self, block: int) -> None:
        cached = block in self._hash_of
        if cached:
            self._evictable[block] = None
        self.pages.let_go(self, block, keep=cached)

    def _revive(self, block: int) -> None:
        del self._evictable[block]
        self.pages.hold(self, block, cached=True)

    def evict(self, block: int) -> None:
        """Forget cached ``block`` (referenced by no one): its units are empty."""
        del self._evictable[block]
        del self._by_hash[self._hash_of.pop(block)]
        self.pages.clear(self, block)


class SharedPages:
    """The line of ``units`` units and its two groups: ``full`` (``full_width`` layers, from
    the top) and ``window`` (``window_width`` layers, from the bottom). The first
    ``max(widths)`` units are the scratch block of both (block 0 of each group)."""

    def __init__(self, units: int, full_width: int, window_width: int, block_size: int,
                 prefix_caching: bool) -> None:
        self.units = units
        self.reserved = max(full_width, window_width)
        if units < self.reserved + full_width + window_width:
            raise ValueError("the KV cache needs at least one block of each group")
        self.owner: list[tuple[GroupPool, int] | None] = [None] * units
        self.held = 0  # units of referenced blocks
        # each group takes the block nearest its end that no one references, whatever is
        # cached there (not empty blocks first, nor its least recently released): the blocks
        # held stay packed at the two ends. Set when fragments stopped a lone sequence
        # (scheduler); cleared when no block is referenced.
        self.compact = False
        self.full = GroupPool(self, full_width, True, block_size, prefix_caching)
        self.window = GroupPool(self, window_width, False, block_size, prefix_caching)
        self.groups = (self.full, self.window)
        for unit in range(self.reserved):
            self._count(unit, 1, 1)

    @property
    def usable(self) -> int:
        return self.units - self.reserved

    def usage(self) -> float:
        """The share of the units that referenced blocks hold (cached ones count as free)."""
        return self.held / self.usable

    def holds(self, full: int, window: int) -> bool:
        """``full`` and ``window`` blocks fit side by side (one spare block of each: where
        the two ends meet, and the top's units past the full group's last block)."""
        return (full + 1) * self.full.width + (window + 1) * self.window.width <= self.usable

    def _count(self, unit: int, busy: int, dirty: int) -> None:
        for group in self.groups:
            group.count(unit // group.width, busy, dirty)

    def hold(self, group: GroupPool, block: int, cached: bool) -> None:
        """``block`` of ``group`` is referenced (``cached``: its units held its contents)."""
        for unit in group.units(block):
            self.owner[unit] = (group, block)
            self._count(unit, 1, 0 if cached else 1)
        self.held += group.width

    def let_go(self, group: GroupPool, block: int, keep: bool) -> None:
        """``block`` is referenced no more (``keep``: cached, its units keep its contents)."""
        for unit in group.units(block):
            if not keep:
                self.owner[unit] = None
            self._count(unit, -1, 0 if keep else -1)
        self.held -= group.width
        if not self.held:
            self.compact = False

    def clear(self, group: GroupPool, block: int) -> None:
        for unit in group.units(block):
            self.owner[unit] = None
            self._count(unit, 0, -1)

    def evict_under(self, group: GroupPool, block: int) -> None:
        """Evict the cached blocks in ``block``'s units (none there is referenced)."""
        for unit in group.units(block):
            owner = self.owner[unit]
            if owner is not None:
                owner[0].evict(owner[1])


def shared_pages(budget: int, layers: int, window_layers: int, layer_block_bytes: int,
                 block_size: int, prefix_caching: bool) -> SharedPages:
    """The line of units in ``budget`` bytes (``layer_block_bytes``: one unit)."""
    if not 0 < window_layers < layers:
        raise ValueError("two KV groups need full and windowed layers both")
    return SharedPages(budget // layer_block_bytes, layers - window_layers, window_layers,
                       block_size, prefix_caching)


class SharedStore(KVStore):
    """The keys and values of every layer in two tensors of ``pages.units`` blocks' rows,
    each layer's a strided view (the module's docstring)."""

    def __init__(self, num_layers: int, sliding: frozenset[int], pages: SharedPages,
                 block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        rows = pages.units * block_size
        self.buffers = [torch.zeros(rows, kv_heads, head_dim, dtype=dtype, device=device)
                        for _ in range(2)]
        windowed = sorted(sliding)
        full = [i for i in range(num_layers) if i not in sliding]

        def view(buffer: torch.Tensor, layer: int) -> torch.Tensor:
            group, order = (pages.window, windowed) if layer in sliding else (pages.full, full)
            j = order.index(layer)
            return buffer[j::group.width][:group.num_blocks * block_size]
        self.keys = [view(self.buffers[0], i) for i in range(num_layers)]
        self.values = [view(self.buffers[1], i) for i in range(num_layers)]

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)
