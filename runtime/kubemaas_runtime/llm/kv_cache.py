"""Paged KV cache: a pool of fixed-size blocks per layer, lent to sequences block by block.

Storage is one tensor per layer for keys and one for values, shaped
``[num_blocks * block_size, kv_heads, head_dim]`` (a slot is one token's keys or values). Block 0
is reserved as the scratch block: the decode rows' slot table points there past a row's context
(masked out of attention), as do the places of the blocks a windowed sequence gave back
(scheduler.Scheduler.slide). A sequence owns a list of block ids; its token ``i`` lives in slot
``blocks[i // block_size] * block_size + i % block_size``.

A forward pass reaches the storage through ``attention.PagedStep``, which writes the new tokens'
keys and values into their slots and attends each row to its own slots.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

import torch

# The chain's start for requests without a cache salt (a salted chain starts at a digest of the
# salt, which no request without one can reach).
UNSALTED = bytes(32)


def cache_root(salt: str | None, lora: int = 0) -> bytes:
    """Where a request's chain of block hashes starts: requests share cached blocks only when
    their prefixes, their ``cache_salt`` (vLLM's request field) and their LoRA adapter (its
    id, never reused: lora.py) are the same."""
    if salt is None and not lora:
        return UNSALTED
    root = UNSALTED if salt is None else hashlib.sha256(
        b"kubemaas cache_salt\0" + salt.encode()).digest()
    if lora:
        root = hashlib.sha256(b"kubemaas lora\0" + str(lora).encode() + b"\0" + root).digest()
    return root


def window_start(position: int, window: int | None, block_size: int) -> int:
    """The first key position, rounded down to its block's first, that the query at
    ``position`` and every later one can see: with a sliding ``window`` it sees keys
    ``position - window + 1 .. position`` (0 without a window)."""
    if window is None:
        return 0
    return max(0, position - window + 1) // block_size * block_size


class OutOfBlocks(Exception):
    """The pool has no free block left (the scheduler preempts or waits)."""


class BlockPool:
    """Allocator of block ids 1..num_blocks-1 (0 is the scratch block), with reference counts and
    an optional prefix cache.

    Prefix caching: a full block is registered under the hash of its tokens and of every token
    before it (a chain hash), so a new sequence whose prompt starts with the same tokens shares
    those blocks instead of computing them again. A block nobody references any more keeps its
    contents and its hash as *evictable* (least recently released first) until its id is needed:
    it counts as free.

    The chain hash is SHA-256, not Python's ``hash``: a hit is taken on the hash alone, and
    Python's tuple hash is neither collision-resistant nor secret (integers hash to themselves),
    so a client could craft a prompt whose blocks hash like another request's and be served
    that request's keys and values, or plant its own for later requests
    (tests/unit/test_llm_prefix_hash.py holds such a pair of blocks). A chain starts at the
    request's ``cache_root`` (its cache salt). With a sliding window on every layer a hit
    needs only the blocks its next token sees (``window_hit``).
    """

    # the blocks' units are shared with another KV group (kv_shared.GroupPool): having room in
    # each of two groups is not having room in both at once
    shares_pages = False

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False) -> None:
        if num_blocks < 2:
            raise ValueError("the KV cache needs at least 2 blocks")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._free = list(range(num_blocks - 1, 0, -1))  # pop() hands out low ids first
        self._refs = [0] * num_blocks
        self._by_hash: dict[bytes, int] = {}
        self._hash_of: dict[int, bytes] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self.queried_tokens = 0  # prefix cache: prompt tokens looked up / found
        self.hit_tokens = 0

    @property
    def usable(self) -> int:
        return self.num_blocks - 1

    @property
    def free(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def used(self) -> int:
        return self.usable - self.free

    def usage(self) -> float:
        return self.used / self.usable

    def unused(self) -> list[int]:
        """The blocks that hold nothing (neither referenced nor cached)."""
        return list(self._free)

    def drop_cached(self) -> int:
        """Forget every cached block nobody references (they become empty); how many."""
        dropped = list(self._evictable)
        for block in dropped:
            self.evict(block)
        return len(dropped)

    def evict(self, block: int) -> None:
        """Forget cached ``block`` (referenced by no one): it is empty again."""
        del self._evictable[block]
        del self._by_hash[self._hash_of.pop(block)]
        self._free.append(block)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def allocate(self, n: int) -> list[int]:
        if n > self.free:
            raise OutOfBlocks(f"need {n} blocks, {self.free} free")
        out = []
        for _ in range(n):
            if self._free:
                block = self._free.pop()
            else:  # reuse the least recently released cached block
                block, _ = self._evictable.popitem(last=False)
                del self._by_hash[self._hash_of.pop(block)]
            self._refs[block] = 1
            out.append(block)
        return out

    def release(self, blocks: list[int]) -> None:
        """Give back a sequence's blocks (and empty the list); 0s, the scratch block in the
        places of blocks already given back (a windowed sequence's: Scheduler.slide), are
        skipped."""
        for block in reversed(blocks):
            if not block:
                continue
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._retire(block)
        blocks.clear()

    def _retire(self, block: int) -> None:
        """``block`` is referenced no more: cached (evictable) if registered, else free."""
        if block in self._hash_of:
            self._evictable[block] = None
        else:
            self._free.append(block)

    def _revive(self, block: int) -> None:
        """A cached ``block`` nobody referenced is referenced again (a prefix hit)."""
        del self._evictable[block]

    def chain_hashes(self, tokens: list[int], start: int, prev: bytes) -> list[bytes]:
        """Chain hashes of the full blocks of ``tokens`` from block index ``start``, after the
        hash ``prev`` (the block before, or the chain's root): SHA-256 of the previous hash and
        the block's token ids as 64-bit integers (a fixed width: the bytes say which ids)."""
        out = []
        bs = self.block_size
        for i in range(start, len(tokens) // bs):
            prev = hashlib.sha256(prev + array("q", tokens[i * bs:(i + 1) * bs]).tobytes()
                                  ).digest()
            out.append(prev)
        return out

    def lookup(self, prompt: list[int], root: bytes = UNSALTED,
               window: int | None = None, limit: int | None = None) -> list[int]:
        """Cached blocks that hold a prefix of ``prompt`` in the chain that starts at ``root``
        (referenced for the caller). The last prompt token is never covered: its logits are
        needed. With a sliding ``window`` on every layer, the longest prefix whose blocks its
        next token sees are cached (``window_hit``), 0s in the places of those before;
        ``limit``: at most that many blocks (another KV group's hit)."""
        if not self.prefix_caching:
            return []
        hashes = self.chain_hashes(prompt[:len(prompt) - 1], 0, root)[:limit]
        found: list[int] = []
        if window is not None:
            found = self.window_hit([self._by_hash.get(h, 0) for h in hashes], window)
        else:
            for h in hashes:
                block = self._by_hash.get(h)
                if block is None:
                    break
                found.append(block)
        for block in found:
            if not block:
                continue
            if self._refs[block] == 0:
                self._revive(block)
            self._refs[block] += 1
        return found

    def window_hit(self, cached: list[int], window: int) -> list[int]:
        """Of a prompt's full blocks, ``cached`` (each the cached block of its chain hash, 0
        where none is), the longest prefix of ``n`` blocks whose token at ``n x block_size``
        finds every block it sees (keys from ``n x block_size - window + 1``, at least the
        prefix's last block) cached, with 0s in the places of the blocks before: vLLM's
        ``SlidingWindowManager.find_longest_cache_hit``. A block's chain hash covers every
        token before it, so its keys and values are this prefix's whether or not the blocks
        before it are still cached."""
        bs = self.block_size
        run = 0  # cached blocks in a row ending at block i
        runs = []
        for block in cached:
            run = run + 1 if block else 0
            runs.append(run)
        for n in range(len(cached), 0, -1):
            dead = max(0, (n * bs - window + 1) // bs)  # (as Scheduler._cached gives back)
            if runs[n - 1] >= max(1, n - dead):
                return [0] * (n - runs[n - 1]) + cached[n - runs[n - 1]:n]
        return []

    def register(self, blocks: list[int], tokens: list[int], done: int, computed: int,
                 root: bytes = UNSALTED) -> int:
        """Register the blocks of a sequence that became full (block indexes ``done`` up to
        ``computed // block_size``; its chain starts at ``root``); returns the new number of
        registered blocks."""
        full = computed // self.block_size
        if not self.prefix_caching or full <= done:
            return done
        prev = self._hash_of.get(blocks[done - 1], root) if done else root
        if done and blocks[done - 1] not in self._hash_of:
            return full  # the chain was broken by a duplicate: later blocks stay private
        for i, h in enumerate(self.chain_hashes(tokens[:full * self.block_size], done, prev),
                              start=done):
            block = blocks[i]
            if h in self._by_hash or block in self._hash_of:
                return full  # another block holds these tokens already
            self._by_hash[h] = block
            self._hash_of[block] = h
        return full


class KVStore:
    """The tensors behind the pool: keys and values of every layer. With ``window_layers``
    (a model whose layers mix a sliding window and full attention: kv_groups.py), those layers
    hold ``window_blocks`` blocks, the blocks of their own group's pool, and the others
    ``num_blocks``."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device,
                 window_layers: frozenset[int] = frozenset(), window_blocks: int = 0) -> None:
        def slots(layer: int) -> int:
            return (window_blocks if layer in window_layers else num_blocks) * block_size
        self.keys = [torch.zeros(slots(i), kv_heads, head_dim, dtype=dtype, device=device)
                     for i in range(num_layers)]
        self.values = [torch.zeros(slots(i), kv_heads, head_dim, dtype=dtype, device=device)
                       for i in range(num_layers)]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys + self.values)

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * block_size * kv_heads * head_dim * itemsize

