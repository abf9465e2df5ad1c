"""Decode-only engine steps on CUDA replayed from CUDA graphs.

On a GPU the kernels of a decode step are short and the CPU's work around them is the step: the
GPU check of a ~1 B Llama in bfloat16 (docs/llm-benchmark.md) found the engine thread launching
kernels for ~12 ms a step, whatever the batch, with py-spy showing the time in the layers'
Python and the attention's launches. A CUDA graph records a step's kernels once and replays
them all with one launch, as vLLM's CUDA graphs do.

A graph holds fixed shapes and addresses, so there is one per (rows, context width) bucket, each
the next power of two: a step's rows are padded (a padding row decodes token 0 at position 0,
writes its keys and values to the scratch block's slot 0 and attends to that slot alone; its
logits are dropped) and its block table widened (scratch block 0, masked out, past each row's
context, as packing.py already pads shorter rows; a model whose layers mix a sliding window and
full attention: its windowed layers' tables too, as wide as a window's blocks can be). Every
graph has its own input tensors, the step's tensors are copied into them, and all graphs
write their logits into one shared tensor
and share one memory pool (they never run at once). ``warm`` captures every bucket the engine
can meet, largest first, at start-up; a bucket met later is captured at its first step. Each
capture is checked once: its replay must give the logits of the same padded step run eagerly,
bit for bit. A capture that fails or differs leaves the engine eager, with a log line. Steps whose
gathered context would pass ``GATHER_CAP`` bytes a layer run eagerly.

``capture=False`` runs the same padded, fixed-address path without graphs: how the CPU tests
check the padding (tests/runtime/test_llm_cuda_graphs.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from .attention import PagedStep
from .decoder_stack import StepForward
from .kv_cache import KVStore

log = logging.getLogger("kubemaas.runtime.llm")

GATHER_CAP = 1 << 30  # bytes of keys and values one layer of a graphed step may gather


def bucket(n: int) -> int:
    """The next power of two at or above ``n`` (n >= 1)."""
    return 1 << (n - 1).bit_length()


def buckets(limit: int) -> list[int]:
    """The buckets of 1 .. ``limit``: powers of two up to the one that holds ``limit``."""
    return [1 << i for i in range(bucket(limit).bit_length())]


@dataclass
class _Bucket:
    """One graph's fixed inputs; ``graph`` is None until captured (or when not capturing)."""

    rows: int
    width: int
    input_ids: torch.Tensor      # [1, rows]
    position_ids: torch.Tensor   # [1, rows]
    keep: torch.Tensor           # [rows]
    write_slots: torch.Tensor    # [rows]
    blocks: torch.Tensor         # [rows, width]
    mask: torch.Tensor           # [rows, 1, 1, width * block_size]
    # a model whose layers mix windows: its windowed layers' tables and mask (PagedStep's
    # window_decode_blocks/_mask), as wide as a window's blocks can be (or the bucket's width)
    window_blocks: torch.Tensor | None = None  # [rows, window width]
    window_mask: torch.Tensor | None = None    # [rows, 1, 1, window width * block_size]
    # with two KV groups (kv_groups.py): the rows' slots in the windowed layers' blocks
    window_write_slots: torch.Tensor | None = None  # [rows]
    graph: Any = None


class GraphedDecode:
    def __init__(self, stack: StepForward, store: KVStore, block_size: int, vocab: int,
                 max_rows: int, capture: bool = True, sliding: frozenset[int] = frozenset(),
                 window: int | None = None, grouped: bool = False) -> None:
        """``sliding``, ``window``: a model whose layers mix a sliding window and full
        attention, its windowed layers and their window (each graph's inputs then carry
        their tables and mask too, packing._decode_tables trimmed to the window);
        ``grouped``: two KV groups, the windowed layers' write slots too."""
        self._grouped = grouped and bool(sliding)
        self._stack = stack
        self._store = store
        self._bs = block_size
        self._capture = capture
        self._sliding = sliding
        # the widest a windowed decode table can be: ceil(window / bs) + 1 blocks
        self._window_width = -(-window // block_size) + 1 if sliding and window else 0
        keys = store.keys[0]
        slot_bytes = 2 * keys[0].numel() * keys.element_size()  # a slot's keys and values
        self._max_tokens = GATHER_CAP // slot_bytes
        self._device = keys.device
        self._logits = torch.empty(bucket(max_rows), vocab, dtype=keys.dtype,
                                   device=self._device)
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._pool: Any = None
        self.failed = False
        self.replays = 0  # decode steps a graph ran

    def graphable(self, rows: int, width: int) -> bool:
        return bucket(rows) * bucket(width) * self._bs <= self._max_tokens

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                 step: PagedStep) -> torch.Tensor:
        """The step's logits: from a graph for a decode-only step, else eagerly."""
        if step.chunks or not step.decode_rows or step.decode_groups or self.failed:
            return self._stack(input_ids, position_ids, keep, step)
        assert step.decode_blocks is not None and step.decode_mask is not None
        rows, width = step.decode_rows, step.decode_blocks.shape[1]
        if not self.graphable(rows, width):
            return self._stack(input_ids, position_ids, keep, step)
        b = self._buckets.get((bucket(rows), bucket(width)))
        fresh = b is None
        if b is None:
            b = self._new_bucket(bucket(rows), bucket(width))
        self._fill(b, input_ids, position_ids, step)
        if fresh and not self._record(b):  # (a recorded graph has run the step)
            return self._stack(input_ids, position_ids, keep, step)
        if not fresh:
            self._replay(b)
        if not self.failed:
            self.replays += 1
        return self._logits[:rows].clone()

    def warm(self, max_rows: int, max_width: int) -> None:
        """Capture every bucket up to ``max_rows`` rows and ``max_width`` blocks that may be
        graphed, largest first (smaller graphs then reuse the pool's memory), each with padding
        rows alone (they write only the scratch slot)."""
        if self.failed:
            return
        t0 = time.perf_counter()
        with torch.inference_mode():
            for rows in reversed(buckets(max_rows)):
                for width in reversed(buckets(max_width)):
                    if (rows, width) in self._buckets or not self.graphable(rows, width):
                        continue
                    if not self._record(self._new_bucket(rows, width)):
                        return
        log.info("decode steps run from CUDA graphs", extra={"fields": {
            "graphs": len(self._buckets), "capture_s": round(time.perf_counter() - t0, 3)}})

    def _new_bucket(self, rows: int, width: int) -> _Bucket:
        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=self._device)

        def padded_mask(wide: int) -> torch.Tensor:
            mask = zeros(rows, 1, 1, wide * self._bs, dtype=torch.bool)
            mask[:, 0, 0, 0] = True  # a padding row attends to the scratch slot alone
            return mask

        b = _Bucket(rows, width, zeros(1, rows), zeros(1, rows),
                    torch.arange(rows, device=self._device), zeros(rows),
                    zeros(rows, width), padded_mask(width))
        if self._window_width:
            wide = min(width, self._window_width)
            b.window_blocks, b.window_mask = zeros(rows, wide), padded_mask(wide)
            if self._grouped:
                b.window_write_slots = zeros(rows)
        return b

    def _fill(self, b: _Bucket, input_ids: torch.Tensor, position_ids: torch.Tensor,
              step: PagedStep) -> None:
        """The step's rows into the bucket's inputs; the rows after them padding."""
        assert step.decode_blocks is not None and step.decode_mask is not None
        rows, width = step.decode_rows, step.decode_blocks.shape[1]
        b.input_ids[:, :rows].copy_(input_ids)
        b.input_ids[:, rows:].zero_()
        b.position_ids[:, :rows].copy_(position_ids)
        b.position_ids[:, rows:].zero_()
        b.write_slots[:rows].copy_(step.write_slots)
        b.write_slots[rows:].zero_()
        b.blocks.zero_()
        b.blocks[:rows, :width].copy_(step.decode_blocks)
        b.mask[:rows].zero_()
        b.mask[:rows, :, :, :width * self._bs].copy_(step.decode_mask)
        if b.window_blocks is not None and b.window_mask is not None:
            assert step.window_decode_blocks is not None and step.window_decode_mask is not None
            wide = step.window_decode_blocks.shape[1]
            b.window_blocks.zero_()
            b.window_blocks[:rows, :wide].copy_(step.window_decode_blocks)
            b.window_mask[:rows].zero_()
            b.window_mask[:rows, :, :, :wide * self._bs].copy_(step.window_decode_mask)
        if b.window_write_slots is not None:
            assert step.window_write_slots is not None
            b.window_write_slots[:rows].copy_(step.window_write_slots)
            b.window_write_slots[rows:].zero_()

    def _eager(self, b: _Bucket) -> torch.Tensor:
        """The padded step through the model, its logits into the shared tensor."""
        step = PagedStep(self._store, self._bs, b.write_slots, b.rows, b.blocks, b.mask,
                         sliding=self._sliding, window_decode_blocks=b.window_blocks,
                         window_decode_mask=b.window_mask,
                         window_write_slots=b.window_write_slots)
        logits = self._stack(b.input_ids, b.position_ids, b.keep, step)
        return self._logits[:b.rows].copy_(logits)

    def _replay(self, b: _Bucket) -> None:
        if b.graph is not None:
            b.graph.replay()
        else:
            self._eager(b)

    def _record(self, b: _Bucket) -> bool:
        """Capture the bucket's graph from its current inputs and check its replay against
        the eager run; False (the engine stays eager) when that fails."""
        self._buckets[(b.rows, b.width)] = b
        if not self._capture:
            self._eager(b)
            return True
        try:
            side = torch.cuda.Stream(self._device)  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(side):  # warm-up off the capture (cuBLAS handles, allocator)
                self._eager(b)
                eager = self._eager(b).clone()
            torch.cuda.current_stream(self._device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self._pool):
                self._eager(b)
            graph.replay()
            same = torch.equal(self._logits[:b.rows], eager)
        except Exception as exc:  # any failure to capture leaves the engine eager
            return self._give_up(f"a capture failed: {exc}")
        if not same:
            return self._give_up("a replayed step's logits differ from the eager step's")
        b.graph = graph
        return True

    def _give_up(self, why: str) -> bool:
        """Eager from now on; the graphs and their pool are let go (a capture that ran out of
        memory leaves the memory to the eager steps)."""
        self.failed = True
        self._buckets.clear()
        self._pool = None
        if self._capture:
            torch.cuda.empty_cache()
        log.warning("decode steps stay eager: %s", why)
        return False
