"""Iteration-level scheduling over the paged KV cache.

Every engine step the scheduler decides which sequences run and how many of their tokens:

* admission: a waiting sequence joins the running batch when ``max_num_seqs`` allows it and the
  pool has blocks for its whole prompt plus a watermark of one free block per running sequence;
  otherwise it waits (requests never push the cache past its budget);
* decode rows: every running sequence whose next token is known feeds that one token;
* prefill chunks: sequences still reading their prompt feed up to the remaining budget of
  ``max_num_batched_tokens`` tokens, so a long prompt is read over several steps and the decodes
  beside it keep going; while decodes run, the chunks are also held to ``prefill_cap`` tokens
  (the engine's ``PrefillPacer``, from measured step times, --prefill-share, default 1) so
  that a step with a prefill is never much slower than a decode step: that step's time is
  every running stream's gap between two tokens;
* growth and preemption: a decode that needs a new block takes one; when none is free the most
  recently admitted sequence gives its blocks back and waits again at the head of the queue
  (its prompt and output so far are read again when it is readmitted: recompute).

With LoRA adapters (lora.py), the sequences of one step use at most ``max_loras`` adapters:
a waiting sequence of another adapter is passed over, and those behind it are admitted.

With a sliding window on every layer (``window``: Mistral-style models), a running sequence
gives back each block that has slid wholly out of the window (``slide``: the token at position
q sees keys q - window + 1 .. q, so a block whose last position is at most ``computed - window``
is never read again); its place in ``Sequence.blocks`` becomes 0, the scratch block, which the
windowed masks leave out. Such a sequence holds at most ``live_blocks`` blocks (plus the chunk
it reads), so admission reserves no more than that, and its prompt's blocks are taken chunk
by chunk (``_room``) as it is read.

With two KV groups (a model whose layers mix a window and full attention, --hybrid-kv-cache:
kv_groups.py), ``pool`` is the full layers' and ``window_pool`` the windowed layers': a
sequence holds its whole context in the first and its window's blocks in the second
(``Sequence.window_blocks``, given back by ``slide`` as above, its prompt's taken chunk by
chunk); admission waits when either group is short, growth preempts when either is empty,
and a prefix hit is the longest that both groups hold. When the two groups share one pool of
pages (kv_shared.py), each may have room and not both: admission then waits (``_take``), and
a sequence that finds no room alone, its own blocks in the way, is read again with the
prefix cache dropped and the blocks packed at the line's two ends (``_unpin``).

With ``priority`` (vLLM's ``--scheduling-policy priority``) the queue is ordered by each
request's priority (lower first), then by arrival, and the sequence preempted is the running one
that comes last in that order.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .detok import Detokenizer
from .kv_cache import UNSALTED, BlockPool, OutOfBlocks, window_start
from .pacing import chunk_reads
from .sampling import SampleState, SamplingParams, TokenLogprobs


@dataclass(eq=False)
class Sequence:
    rid: int
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[Any], None]
    detok: Detokenizer
    arrival: float = field(default_factory=time.monotonic)
    ids: list[int] = field(default_factory=list)  # prompt + output
    output: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    computed: int = 0  # tokens whose keys and values are in the cache
    registered: int = 0  # leading full blocks registered in the prefix cache
    freed: int = 0  # leading blocks given back, slid out of the window (0s in ``blocks``)
    # with two KV groups (a mixed-window model: kv_groups.py), the windowed layers' blocks
    # (``blocks`` then the full layers'), and as above, the registered and the given back
    window_blocks: list[int] | None = None
    window_registered: int = 0
    window_freed: int = 0
    cache_root: bytes = UNSALTED  # where its prefix-cache chain starts (kv_cache.cache_root)
    priority: int = 0  # with priority scheduling: lower is served first (vLLM's)
    lora: int = 0  # the LoRA adapter's id (lora.py); 0: the base model
    counted: bool = True  # takes a place in the queue (not a beam search's step: queue_room.py)
    cached_tokens: int | None = None  # prompt tokens found in the cache when first admitted
    sample_state: SampleState | None = None
    # with params.prompt_logprobs: the logprobs of prompt tokens 1.. (prompt_scores.py)
    prompt_logprobs: list[TokenLogprobs] | None = None
    finish_reason: str | None = None
    scheduled_at: float | None = None  # when first admitted to the running batch
    first_token_at: float | None = None
    last_token_at: float | None = None

    def __post_init__(self) -> None:
        self.ids = list(self.prompt)
        self.sample_state = SampleState(self.params)
        if self.params.prompt_logprobs is not None:
            self.prompt_logprobs = []

    @property
    def scoring(self) -> bool:
        """Prompt tokens remain to be scored (their positions must be computed, not taken
        from the prefix cache)."""
        return self.prompt_logprobs is not None and \
            len(self.prompt_logprobs) < len(self.prompt) - 1

    @property
    def remaining(self) -> int:
        return len(self.ids) - self.computed

    @property
    def rank(self) -> tuple[int, float, int]:
        """Its place in a priority queue: priority, then arrival."""
        return self.priority, self.arrival, self.rid


# a model whose layers mix a sliding window and full attention: (the window, the share of the
# layers that have it); its windowed layers read only their windows (packing.py), so the
# positions a row reads are the layers' average
Mixed = tuple[int, float]


def mixed(window: int | None, sliding: frozenset[int], layers: int) -> Mixed | None:
    """``Mixed`` for a model (loader.LanguageModel's ``window``, ``sliding``); None unless its
    layers mix the window and full attention."""
    return (window, len(sliding) / layers) if sliding and window is not None else None


@dataclass
class Step:
    decode: list[Sequence]
    prefill: list[tuple[Sequence, int]]  # (sequence, tokens fed this step)
    window: int | None = None  # every layer's sliding window (Scheduler.window)
    block_size: int = 1
    mixed: Mixed | None = None  # (Scheduler.mixed)

    def __bool__(self) -> bool:
        return bool(self.decode or self.prefill)

    def reads(self) -> int:
        """KV positions the step's rows attend over (before it runs: the pacer's fit); with a
        window on every layer a chunk's context starts at its window (packing.Chunk.first);
        with ``mixed``, the layers' average."""
        return decode_reads(self.decode, self.window, self.mixed) + sum(
            chunk_reads(read_prefix(s.computed, self.window, self.block_size, self.mixed), n)
            for s, n in self.prefill)


def read_prefix(computed: int, window: int | None, block_size: int,
                mixed: Mixed | None = None) -> int:
    """The cached keys a prompt chunk from position ``computed`` attends over (all of them, or
    with a window on every layer, those from its window's first block on; with ``mixed``,
    the layers' average: ``chunk_reads`` is linear in it)."""
    prefix = computed - window_start(computed, window, block_size)
    if mixed is None or window is not None:
        return prefix
    size, share = mixed
    windowed = computed - window_start(computed, size, block_size)
    return round((1 - share) * prefix + share * windowed)


def decode_reads(decode: list[Sequence], window: int | None = None,
                 mixed: Mixed | None = None) -> int:
    """KV positions decode rows attend over: each its cached context and itself (with a
    window on every layer, at most the window: packing._decode_tables; with ``mixed``, the
    layers' average)."""
    if window is not None:
        return sum(min(s.computed + 1, window) for s in decode)
    full = sum(s.computed + 1 for s in decode)
    if mixed is None:
        return full
    size, share = mixed
    return round((1 - share) * full + share * decode_reads(decode, size))


class Scheduler:
    def __init__(self, pool: BlockPool, max_num_seqs: int, max_num_batched_tokens: int,
                 priority: bool = False, max_loras: int = 0, window: int | None = None,
                 mixed: Mixed | None = None, window_pool: BlockPool | None = None) -> None:
        self.pool = pool
        # two KV groups: the windowed layers' own pool (``mixed``'s window), whose blocks a
        # sequence gives back as they slide out of it; ``pool`` is then the full layers'
        self.window_pool = window_pool
        self.group_window = mixed[0] if window_pool is not None and mixed else None
        self.window_live = window_pool.blocks_for(self.group_window) + 1 \
            if window_pool is not None and self.group_window is not None else 0
        # every layer's sliding window (None: some layer sees every key: blocks stay held)
        self.window = window
        self.mixed = mixed  # the window of some layers alone, and their share (Mixed)
        # the most blocks a windowed sequence holds for a decode: its window's and the next
        self.live_blocks = pool.blocks_for(window) + 1 if window is not None else 0
        self.max_loras = max_loras  # adapters in the running batch at most (0: no LoRA)
        self.priority = priority  # order by Sequence.rank, not by arrival alone
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # (decode rows, sequences with prompt left, the decodes' KV reads, the first such
        # sequence's tokens read) -> prompt tokens this step may read (None: only the budget)
        self.prefill_cap: Callable[[int, int, int, int], int | None] = lambda *_: None
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        if self.priority:
            self.waiting.insert(bisect.bisect(self.waiting, seq.rank, key=lambda s: s.rank), seq)
        else:
            self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out (finished or cancelled) and free its blocks at once."""
        if seq in self.running:
            self.running.remove(seq)
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(seq)
        self._release(seq)

    def _release(self, seq: Sequence) -> None:
        """Give back every block ``seq`` holds, in both groups."""
        self.pool.release(seq.blocks)
        if self.window_pool is not None and seq.window_blocks is not None:
            self.window_pool.release(seq.window_blocks)

    def _admit(self) -> None:
        passed = 0  # sequences at the head left waiting for an adapter slot
        unpinned = False
        while len(self.waiting) > passed and len(self.running) < self.max_num_seqs:
            seq = self.waiting[passed]
            if not self._adapter_fits(seq):
                passed += 1
                continue
            cached, window_cached = self._cached(seq)
            need = fresh = self.pool.blocks_for(len(seq.ids) + 1) - len(cached)
            # with a window, at most the blocks it holds for a decode, the hit's counted
            # (they fit in a pool that holds one sequence: the rest of a long prompt is taken
            # chunk by chunk, _room)
            if self.window is not None:
                need = min(need, self.live_blocks - _held(cached))
            window_need = min(fresh, self.window_live - _held(window_cached))
            short = self._short(self.pool, need) or (
                self.window_pool is not None and self._short(self.window_pool, window_need))
            taken = None if short else self._take(need, window_need)
            if taken is None:
                self.pool.release(cached)
                if self.window_pool is not None:
                    self.window_pool.release(window_cached)
                if not short and not self.running and not unpinned and self._unpin():
                    unpinned = True
                    continue  # (cached blocks stood between the two groups' ends)
                return  # wait for blocks: never overcommit the cache (either group)
            self.pool.queried_tokens += len(seq.ids)
            self.pool.hit_tokens += len(cached) * self.pool.block_size
            seq.blocks = cached + taken[0]
            if self.window_pool is not None:
                seq.window_blocks = window_cached + taken[1]
                seq.window_registered = len(window_cached)
                seq.window_freed = window_cached.count(0)
            seq.registered = len(cached)
            seq.computed = len(cached) * self.pool.block_size
            seq.freed = cached.count(0)
            if seq.cached_tokens is None:  # a preempted sequence keeps its first count
                seq.cached_tokens = seq.computed
                seq.scheduled_at = time.monotonic()
            del self.waiting[passed]
            self.running.append(seq)

    def _take(self, need: int, window_need: int) -> tuple[list[int], list[int]] | None:
        """``need`` new blocks of the full group and ``window_need`` of the windowed one;
        None when the groups share pages (kv_shared.py) and had room each, not both."""
        blocks = self.pool.allocate(need)
        if self.window_pool is None:
            return blocks, []
        try:
            return blocks, self.window_pool.allocate(window_need)
        except OutOfBlocks:
            self.pool.release(blocks)
            return None

    def _unpin(self) -> bool:
        """With groups over one pool of pages and nothing running: drop the prefix cache and
        take blocks nearest each group's end from now on (kv_shared.SharedPages.compact), so
        a lone sequence's blocks are packed at the two ends; False when nothing changed."""
        pages = getattr(self.window_pool, "pages", None)
        if pages is None:
            return False
        changed = self._drop_cached() > 0 or not pages.compact
        pages.compact = True
        return changed

    def _drop_cached(self) -> int:
        dropped = self.pool.drop_cached()
        return dropped + (self.window_pool.drop_cached() if self.window_pool else 0)

    def _short(self, pool: BlockPool, need: int) -> bool:
        """``pool`` lacks ``need`` blocks, leaving one for each running sequence."""
        return (need + len(self.running) > pool.free and bool(self.running)) or \
            need > pool.free

    def _cached(self, seq: Sequence) -> tuple[list[int], list[int]]:
        """Shared blocks holding a prefix of ``seq`` (referenced); with a window, the longest
        prefix whose blocks its next token sees are cached (BlockPool.window_hit), those
        before given back at once or not found (0s in their places). With two KV groups, the
        hit is the longest prefix that both hold: the full group from block 0, the windowed
        one the blocks its next token sees (the second list; empty with one group)."""
        cached = [] if seq.scoring else self.pool.lookup(seq.ids, seq.cache_root, self.window)
        cached = _slid(self.pool, cached, self.window)
        if self.window_pool is None or not cached:
            return cached, []
        found = _slid(self.window_pool, self.window_pool.lookup(
            seq.ids, seq.cache_root, self.group_window, limit=len(cached)), self.group_window)
        self.pool.release(cached[len(found):])  # (a copy: ``cached`` keeps its blocks)
        return cached[:len(found)], found

    def _adapter_fits(self, seq: Sequence) -> bool:
        """Its adapter is running already, or there is room for one more."""
        if not seq.lora:
            return True
        running = {s.lora for s in self.running if s.lora}
        return seq.lora in running or len(running) < self.max_loras

    def slide(self, seq: Sequence) -> None:
        """With a window: give back ``seq``'s blocks that no later token reads (the token at
        ``computed`` sees keys from ``computed - window + 1``); a block registered in the
        prefix cache stays cached, its keys and values still those of its positions."""
        if self.window is not None:
            seq.freed = _give_back(self.pool, seq.blocks, seq.freed, seq.computed, self.window)
        elif self.window_pool is not None and self.group_window is not None and \
                seq.window_blocks is not None:
            seq.window_freed = _give_back(self.window_pool, seq.window_blocks, seq.window_freed,
                                          seq.computed, self.group_window)

    def _room(self, seq: Sequence, n: int) -> int:
        """With a window: the blocks for ``seq``'s next ``n`` prompt tokens, as many as the
        pool gives leaving a block for each other running sequence; the tokens they hold (at
        least one, preempting the newest other sequence if need be; 0: none could be freed,
        which a lone sequence never meets: the engine checks the pool holds ``live_blocks``)."""
        pool, blocks = self.pool, seq.blocks
        if self.window_pool is not None and seq.window_blocks is not None:
            pool, blocks = self.window_pool, seq.window_blocks  # (the full group holds all)
        bs = pool.block_size
        short = pool.blocks_for(seq.computed + n) - len(blocks)
        if short > 0:
            spare = pool.free - len(self.running) + 1
            blocks.extend(pool.allocate(max(0, min(short, spare))))
            if len(blocks) * bs <= seq.computed and \
                    not self._grow(seq, seq.computed + 1):
                return 0
        return min(n, len(blocks) * bs - seq.computed)

    def _preempt(self, keep: Sequence) -> bool:
        """Free the blocks of the newest running sequence other than ``keep`` (with
        priorities: the one of lowest priority, the newest among equals)."""
        others = [s for s in self.running if s is not keep]
        if not others:
            return False
        self._requeue(max(others, key=lambda s: s.rank) if self.priority else others[-1])
        return True

    def _requeue(self, victim: Sequence) -> None:
        """``victim`` gives its blocks back and waits again (recompute)."""
        self.running.remove(victim)
        self._release(victim)
        victim.computed = victim.registered = victim.freed = 0
        victim.window_registered = victim.window_freed = 0
        victim.window_blocks = None
        if self.priority:
            self.add(victim)  # ahead of the later arrivals of its priority
        else:
            self.waiting.appendleft(victim)
        self.preemptions += 1

    def _grow(self, seq: Sequence, tokens: int) -> bool:
        """Make room for ``tokens`` cached tokens (in both KV groups); False when ``seq``
        itself was preempted."""
        for pool, blocks in self._groups(seq):
            while pool.blocks_for(tokens) > len(blocks):
                try:
                    blocks.extend(pool.allocate(1))
                except OutOfBlocks:
                    if self._preempt(seq):
                        continue
                    if pool.shares_pages:
                        # alone, yet no room: its own blocks lie between the two groups'
                        # ends (kv_shared.py); read it again, packed from the ends
                        self._requeue(seq)
                        self._unpin()
                    return False
        return True

    def _groups(self, seq: Sequence) -> list[tuple[BlockPool, list[int]]]:
        """Each KV group's pool and ``seq``'s blocks in it."""
        if self.window_pool is None or seq.window_blocks is None:
            return [(self.pool, seq.blocks)]
        return [(self.pool, seq.blocks), (self.window_pool, seq.window_blocks)]

    def schedule(self) -> Step:
        self._admit()
        decode: list[Sequence] = []
        for seq in list(self.running):
            if seq.remaining == 1 and seq in self.running and self._grow(seq, seq.computed + 1):
                decode.append(seq)
        decode = [s for s in decode if s in self.running]  # a later grow may preempt
        budget = self.max_num_batched_tokens - len(decode)
        reading = [s for s in self.running if s.remaining > 1]
        cap = None
        if decode and reading:
            cap = self.prefill_cap(len(decode), len(reading),
                                   decode_reads(decode, self.window, self.mixed),
                                   read_prefix(reading[0].computed, self.window,
                                               self.pool.block_size, self.mixed))
        if cap is not None:
            budget = min(budget, cap)
        prefill: list[tuple[Sequence, int]] = []
        for seq in reading:
            if budget <= 0:
                break
            n = min(seq.remaining, budget)
            if self.window is not None or self.window_pool is not None:
                n = self._room(seq, n) if seq in self.running else 0
                if n <= 0:
                    continue
            prefill.append((seq, n))
            budget -= n
        if self.window is not None or self.window_pool is not None:
            # a later chunk's room may have preempted an earlier row
            decode = [s for s in decode if s in self.running]
            prefill = [(s, n) for s, n in prefill if s in self.running]
        return Step(decode, prefill, self.window, self.pool.block_size, self.mixed)


def _held(blocks: list[int]) -> int:
    """The blocks of a prefix hit that are held (not 0s: given back before its window)."""
    return len(blocks) - blocks.count(0)


def _slid(pool: BlockPool, cached: list[int], window: int | None) -> list[int]:
    """A prefix hit's blocks with those before its next token's window given back at once
    (0s in their places)."""
    if window is not None and cached:
        dead = max(0, (len(cached) * pool.block_size - window + 1) // pool.block_size)
        pool.release(cached[:dead])  # (empties that slice's copy, not ``cached``)
        cached[:dead] = [0] * dead
    return cached


def _give_back(pool: BlockPool, blocks: list[int], freed: int, computed: int,
               window: int) -> int:
    """Give back ``blocks`` that no later token reads under ``window`` (the token at
    ``computed`` sees keys from ``computed - window + 1``); the new count given back."""
    dead = min((computed - window + 1) // pool.block_size, len(blocks))
    if dead <= freed:
        return freed
    gone = blocks[freed:dead]
    blocks[freed:dead] = [0] * (dead - freed)
    pool.release(gone)
    return dead
