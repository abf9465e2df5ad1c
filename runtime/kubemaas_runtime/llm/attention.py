"""Attention over the paged KV cache for one engine step whose rows are packed into one sequence.

An engine step feeds decode tokens (one per running sequence) and prefill chunks. They run as
one forward pass over a single packed sequence ``[1, N]`` (no padding): the linear layers, which
hold nearly all of the compute and read every weight once per forward, see the N tokens
together, so a step that also reads a prompt costs one pass over the weights, not two. Attention
is the one place where rows must stay apart. The model therefore runs with this module's
attention function, registered with transformers as ``kubemaas_paged``; transformers builds no
mask for an implementation it does not know, and the function attends each row to its own
context in the paged cache:

* decode rows (the first ``decode_rows`` packed tokens) together, as a batch ``[B, kv_heads,
  group, d]`` (the query heads that share a kv head as its rows) over their contexts gathered
  block by block from the pool ``[B, kv_heads, T, d]`` (T: the longest row's blocks), masked to
  each row's length; on CPU, rows whose contexts differ widely (a long conversation beside
  short ones) attend in groups of similar width (``PagedStep.decode_groups``), so one long row
  no longer pads every row's gather and attention to its length; on CPU, when the rows' lanes
  hold their contexts (decode_lanes.py: one contiguous copy per row, written beside the pool),
  the rows attend over the lanes in place, with no gather;
* prefill chunks over their contexts (cached prefix + the chunk), causally: a long chunk on its
  own; short ones of similar size together (``ChunkBatch``, grouped by packing.py), queries
  padded to the longest and contexts to the widest, so that a step reading many prompts makes
  one attention call per layer, not one per prompt (a call costs about as much as its work
  there: launches on a GPU, Python and dispatch on a small model on CPU).

``PagedStep`` is what the step passes to the model as its ``cache``: ``update`` writes the new
keys and values into their slots and returns the layer's whole pool, which the attention
function reads through the step's block tables (it reaches the step through the forward's
keyword arguments, ``kubemaas_step``, which transformers hands to every attention call).
A model with a sliding window gets its window in the masks (packing.py: position p sees keys
p - window + 1 .. p). Where every layer is windowed, a row reads only the blocks its window
can reach (a decode row's table, a chunk's ``Chunk.first``): a prompt chunk's work is bounded
by ``length x (window + length)``, not by how far into a long prompt it is. Where the layers
mix windowed and full attention, the step carries tables and masks of both kinds and
``PagedStep.sliding`` says which layers take the windowed ones: the full layers read the whole
context, the windowed ones the blocks their window reaches alone, as above (their own decode
tables, ``PagedStep.window_decode_blocks``; a chunk's ``Chunk.window_first``).

On CUDA the engine's attention leaves out cuDNN's kernels (``choose_kernels``), torch's first
choice on Hopper: cuDNN builds an execution plan on the CPU for every new shape, and an engine
step's shapes (each chunk's length and context, the decode rows' count and width) are new all
the time; flash and memory-efficient attention take any shape as it comes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .kv_cache import KVStore

if TYPE_CHECKING:
    from .decode_lanes import DecodeLanes

ATTN_IMPLEMENTATION = "kubemaas_paged"
STEP_KWARG = "kubemaas_step"

log = logging.getLogger("kubemaas.runtime.llm")


@dataclass
class Chunk:
    """A prefill chunk: packed tokens ``start .. start + length`` of one sequence, at positions
    ``offset .. offset + length`` (``offset`` tokens of it are already cached)."""

    start: int
    length: int
    offset: int
    # [W] the blocks of the context from position ``first`` to ``offset + length``
    blocks: torch.Tensor
    # [length, offset + length - first]; None: plain causal (offset 0, no window reached)
    mask: torch.Tensor | None = None
    # the sliding layers' (PagedStep.sliding) mask, over ``window_blocks`` from
    # ``window_first``: [length, offset + length - window_first]; None: plain causal
    window_mask: torch.Tensor | None = None
    # the first key position in ``blocks`` (a block's first): with a window on every layer,
    # the block of the first key its first query sees (kv_cache.window_start), so that a
    # chunk reads ``window + length`` keys at most, however far into its prompt; else 0
    first: int = 0
    # where the layers mix windows, the sliding layers' blocks, from ``window_first`` (the
    # block of the first key its first query sees), as ``blocks``/``first`` on every layer
    window_blocks: torch.Tensor | None = None
    window_first: int = 0

    def windowed(self) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """The sliding layers' (blocks, first, mask)."""
        if self.window_blocks is None:
            return self.blocks, self.first, self.window_mask
        return self.window_blocks, self.window_first, self.window_mask


@dataclass
class ChunkBatch:
    """Consecutive prefill chunks attended in one call, as C rows of L padded queries over
    contexts of W blocks. A padding query repeats its chunk's last token, so no row of the mask
    is empty; ``real`` picks the real rows back out, in packed order."""

    rows: torch.Tensor    # [C * L] the packed index of each padded query
    # [C, W] each chunk's blocks from its ``Chunk.first`` (the scratch block 0 past its context)
    blocks: torch.Tensor
    # [C, 1, L, W * block_size] bool: key j <= the query's position p (and j > p - window),
    # j counted from the chunk's first key
    mask: torch.Tensor
    real: torch.Tensor    # [n] indexes into C * L of the chunks' own tokens
    # where the layers mix windows, the sliding layers' (PagedStep.sliding): [C, Ww] each
    # chunk's blocks from its ``Chunk.window_first``, and the mask over them [C, 1, L, Ww * bs]
    window_mask: torch.Tensor | None = None
    window_blocks: torch.Tensor | None = None

    def to(self, device: torch.device) -> ChunkBatch:
        def move(t: torch.Tensor | None) -> Any:
            return None if t is None else t.to(device)
        return ChunkBatch(self.rows.to(device), self.blocks.to(device), self.mask.to(device),
                          self.real.to(device), move(self.window_mask), move(self.window_blocks))


@dataclass
class PagedStep:
    store: KVStore
    block_size: int
    write_slots: torch.Tensor  # [N] the packed tokens' slots
    decode_rows: int = 0
    decode_blocks: torch.Tensor | None = None  # [B, W] (0, the scratch block, past a row's end)
    decode_mask: torch.Tensor | None = None  # [B, 1, 1, W * block_size] bool
    chunks: list[Chunk] = field(default_factory=list)
    # the chunks as attention calls, in packed order (None: each chunk on its own)
    units: list[Chunk | ChunkBatch] | None = None
    # decode rows attended in groups of (rows, width in blocks), in row order, each over its
    # own width of the tables (packing.decode_groups); None: one call over the whole width
    decode_groups: list[tuple[int, int]] | None = None
    # on CPU: the decode rows' keys and values also in lanes, row i in lane i (decode_lanes.py),
    # which the decode attention reads instead of gathering blocks of the pools
    lanes: DecodeLanes | None = None
    decode_positions: torch.Tensor | None = None  # [B] with lanes: where each row's token goes
    layer: int = 0  # the layer whose keys and values ``update`` wrote last
    # a model whose layers mix a sliding window and full attention: the windowed layers, which
    # attend with the ``window_`` tables and masks (the others with the full-causal ones);
    # empty: every layer attends with ``mask`` (which carries a window every layer shares)
    sliding: frozenset[int] = frozenset()
    # the windowed layers' decode tables [B, Ww], each row's from the block of its first
    # visible key (packing._decode_tables with ``trim``), and their mask [B, 1, 1, Ww * bs];
    # they attend in one call (no groups: every row's table spans about a window)
    window_decode_mask: torch.Tensor | None = None
    window_decode_blocks: torch.Tensor | None = None
    # with two KV groups (kv_groups.py): the packed tokens' slots in the windowed layers' own
    # blocks, which every ``window_`` table and ``Chunk.window_blocks`` index; None: one group
    window_write_slots: torch.Tensor | None = None

    is_compileable = False

    def to(self, device: torch.device) -> PagedStep:
        """The step's tables on ``device`` (packing builds them on the CPU: there, itself)."""
        if device.type == self.write_slots.device.type:
            return self

        def move(t: torch.Tensor | None) -> Any:
            return None if t is None else t.to(device)

        def moved(c: Chunk) -> Chunk:
            return Chunk(c.start, c.length, c.offset, move(c.blocks), move(c.mask),
                         move(c.window_mask), c.first, move(c.window_blocks), c.window_first)
        chunks = [moved(c) for c in self.chunks]
        same = {id(c): m for c, m in zip(self.chunks, chunks, strict=True)}
        units = None if self.units is None else [
            u.to(device) if isinstance(u, ChunkBatch) else same[id(u)] for u in self.units]
        return PagedStep(self.store, self.block_size, move(self.write_slots), self.decode_rows,
                         move(self.decode_blocks), move(self.decode_mask), chunks, units,
                         self.decode_groups, self.lanes, move(self.decode_positions),
                         sliding=self.sliding,
                         window_decode_mask=move(self.window_decode_mask),
                         window_decode_blocks=move(self.window_decode_blocks),
                         window_write_slots=move(self.window_write_slots))

    # the part of transformers' Cache that decoder attention layers call
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states: [1, kv_heads, N, head_dim]
        # no NaN or infinity enters the cache: a block outlives its sequence, and attention
        # reads the slots past a row's length with weight 0, which does not hide a NaN (0 x NaN
        # is NaN): one request's overflow (a broken LoRA adapter, fp16) would corrupt the
        # answers of later requests given its blocks. (The writer's own row is NaN anyway.)
        key_states.nan_to_num_(0.0, 0.0, 0.0)
        value_states.nan_to_num_(0.0, 0.0, 0.0)
        k_pool, v_pool = self.store.keys[layer_idx], self.store.values[layer_idx]
        slots = self.write_slots
        if self.window_write_slots is not None and layer_idx in self.sliding:
            slots = self.window_write_slots
        k_pool.index_copy_(0, slots, key_states[0].transpose(0, 1))
        v_pool.index_copy_(0, slots, value_states[0].transpose(0, 1))
        self.layer = layer_idx
        if self.lanes is not None:
            assert self.decode_positions is not None
            # (the row count from a tensor's shape: a traced graph serves every batch size)
            rows = self.decode_positions.shape[0]
            self.lanes.write(layer_idx, key_states[0, :, :rows].transpose(0, 1),
                             value_states[0, :, :rows].transpose(0, 1), self.decode_positions)
        return k_pool, v_pool

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are explicit; nothing asks the cache for them


def _gather(pool: torch.Tensor, blocks: torch.Tensor, block_size: int) -> torch.Tensor:
    """The slots of ``blocks`` (any shape [..., W]) as [..., W * block_size, kv_heads, d]:
    whole blocks copied by index_select (one row per block, not per token; index_select is
    1.8x faster than advanced indexing on CPU)."""
    rows = pool.view(-1, block_size, *pool.shape[1:]).index_select(0, blocks.reshape(-1))
    return rows.view(*blocks.shape[:-1], blocks.shape[-1] * block_size, *pool.shape[1:])


def paged_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None,
                    dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """query [1, heads, N, d]; key/value: the layer's pools [slots, kv_heads, d] (from
    ``PagedStep.update``). Returns [1, N, heads, d] as transformers' attention functions do."""
    step: PagedStep = kwargs[STEP_KWARG]
    # Gemma 2's attention logit soft-capping: scores -> softcap * tanh(scores / softcap)
    softcap: float | None = kwargs.get("softcap")
    # grouped-query attention: from the module when it says (a traced graph must not read it
    # from the shapes: a comparison of traced sizes would be frozen into the graph)
    groups = getattr(module, "num_key_value_groups", None)
    gqa = groups != 1 if isinstance(groups, int) else query.shape[1] != key.shape[1]
    bs = step.block_size
    windowed = step.layer in step.sliding  # (empty unless the layers mix windows)
    parts = []
    if step.decode_rows:
        parts.append(_decode_rows(step, query, key, value, scaling, softcap, windowed))
    for unit in step.chunks if step.units is None else step.units:
        if isinstance(unit, ChunkBatch):
            parts.append(_attend_batch(unit, query, key, value, bs, scaling, gqa, windowed,
                                       softcap))
        else:
            parts.append(_attend_chunk(unit, query, key, value, bs, scaling, gqa, windowed,
                                       softcap))
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).unsqueeze(0), None


def _decode_rows(step: PagedStep, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 scaling: float | None, softcap: float | None, windowed: bool) -> torch.Tensor:
    """The decode rows' attention [B, H, d]: over the lanes, the tables in width groups or
    whole; a mixed model's windowed layer over its own tables, which span the rows' windows."""
    assert step.decode_blocks is not None
    bs = step.block_size
    # the rows' count from their block table, so that a traced graph (traced_decode.py)
    # serves every batch size
    rows = step.decode_blocks.shape[0]
    heads, kv_heads = query.shape[1], key.shape[1]
    # the query heads that share a kv head become that head's query rows: [B, kvH, g, d]
    # (8-15 % less time than sdpa's own GQA over [B, H, 1, d]; the mask broadcasts)
    q = query[0, :, :rows].transpose(0, 1).reshape(rows, kv_heads, heads // kv_heads, -1)
    mask = step.window_decode_mask if windowed else step.decode_mask
    if windowed and step.window_decode_blocks is not None:
        out = _attend_decodes(q, key, value, step.window_decode_blocks, mask, bs, scaling,
                              softcap)
    elif step.lanes is not None:
        assert mask is not None
        width = mask.shape[-1]
        out = _attend_lanes(q, step.lanes.keys[step.layer][:rows, :, :width],
                            step.lanes.values[step.layer][:rows, :, :width],
                            mask, scaling, softcap)
    elif step.decode_groups is None:
        out = _attend_decodes(q, key, value, step.decode_blocks, mask, bs, scaling, softcap)
    else:
        assert mask is not None
        outs, r = [], 0
        for n, width in step.decode_groups:
            outs.append(_attend_decodes(q[r:r + n], key, value,
                                        step.decode_blocks[r:r + n, :width],
                                        mask[r:r + n, ..., :width * bs], bs, scaling, softcap))
            r += n
        out = torch.cat(outs)
    return out.reshape(rows, heads, -1)


def _attend_decodes(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    blocks: torch.Tensor, mask: torch.Tensor | None, bs: int,
                    scaling: float | None, softcap: float | None = None) -> torch.Tensor:
    """Decode rows ``q`` [B, kvH, g, d] over their contexts: ``blocks`` [B, W] of the pools."""
    k = _gather(key, blocks, bs).transpose(1, 2)                           # [B, kvH, T, d]
    v = _gather(value, blocks, bs).transpose(1, 2)
    return sdpa(q, k, v, mask, scaling, softcap)


def _attend_lanes(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                  scaling: float | None, softcap: float | None = None) -> torch.Tensor:
    """Decode rows ``q`` [B, kvH, g, d] over their lanes ``key``, ``value`` [B, kvH, W, d] as
    two matrix products, keys first: each (row, kv head) is a matrix-vector product with g
    vectors, which sdpa's CPU kernel and ``q @ k^T`` run as general products with g rows at
    about half the bandwidth of a read. ``key @ q^T`` ([W, d] by [d, g]) streams the keys.
    In 16-bit dtypes sdpa, whose kernel keeps the scores and the softmax in float32 (two
    products would round the scores to 16 bits; measured only in float32)."""
    if key.dtype != torch.float32:
        return sdpa(q, key, value, mask, scaling, softcap)
    scale = q.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(key, q.transpose(-1, -2)).transpose(-1, -2).contiguous()
    scores.mul_(scale)
    if softcap is not None:
        scores = torch.tanh(scores.div_(softcap)).mul_(softcap)
    scores.masked_fill_(mask.logical_not(), float("-inf"))   # [B, kvH, g, W]
    return torch.matmul(torch.softmax(scores, dim=-1), value)


def _attend_chunk(c: Chunk, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bs: int,
                  scaling: float | None, gqa: bool, windowed: bool = False,
                  softcap: float | None = None) -> torch.Tensor:
    q = query[:, :, c.start:c.start + c.length]                       # [1, H, n, d]
    blocks, first, mask = c.windowed() if windowed else (c.blocks, c.first, c.mask)
    ctx = c.offset + c.length - first
    k = _gather(key, blocks, bs)[:ctx].transpose(0, 1).unsqueeze(0)    # [1, kvH, ctx, d]
    v = _gather(value, blocks, bs)[:ctx].transpose(0, 1).unsqueeze(0)
    out = sdpa(q, k, v, mask, scaling, softcap, gqa, causal=mask is None)
    return out[0].transpose(0, 1)                                      # [n, H, d]


def _attend_batch(b: ChunkBatch, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  bs: int, scaling: float | None, gqa: bool, windowed: bool = False,
                  softcap: float | None = None) -> torch.Tensor:
    chunks, length = b.blocks.shape[0], b.mask.shape[2]
    mask = b.window_mask if windowed and b.window_mask is not None else b.mask
    blocks = b.window_blocks if windowed and b.window_blocks is not None else b.blocks
    heads, dim = query.shape[1], query.shape[3]
    q = query[0].index_select(1, b.rows).view(heads, chunks, length, dim).transpose(0, 1)
    k = _gather(key, blocks, bs).transpose(1, 2)                       # [C, kvH, T, d]
    v = _gather(value, blocks, bs).transpose(1, 2)
    if gqa and query.device.type in GROUPED_ROWS_ON:
        out = _grouped_rows(q, k, v, mask, scaling, softcap)
    else:
        # sdpa's own GQA: on CPU, measured against the grouped-rows layout, as fast or faster
        out = sdpa(q, k, v, mask, scaling, softcap, gqa)                 # [C, H, L, d]
    return out.transpose(1, 2).reshape(chunks * length, heads, dim).index_select(0, b.real)


# Where a chunk batch's grouped-query call takes the decode rows' layout. On CUDA without cuDNN
# (choose_kernels) no fused kernel takes a mask with sdpa's enable_gqa, and torch runs its
# math path in float32 (a third of the GPU time of a step reading 64 prompts on the H200); in
# the same profile the decode rows' masked calls, in this layout, did not fall to it.
GROUPED_ROWS_ON = {"cuda"}


def _grouped_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                  scaling: float | None, softcap: float | None = None) -> torch.Tensor:
    """q [C, H, L, d] over k, v [C, kvH, T, d] with mask [C, 1, L, T], as one attention of
    the query heads that share a KV head stacked as that head's rows ([C, kvH, g * L, d], the
    mask repeated per head of the group). Returns [C, H, L, d]."""
    chunks, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    rows = q.reshape(chunks, kv_heads, group * length, dim)
    stacked = mask.expand(chunks, group, length, mask.shape[-1]).reshape(
        chunks, 1, group * length, mask.shape[-1])
    out = sdpa(rows, k, v, stacked, scaling, softcap)
    return out.reshape(chunks, heads, length, dim)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
         scaling: float | None, softcap: float | None = None, gqa: bool = False,
         causal: bool = False) -> torch.Tensor:
    """torch's scaled-dot-product attention (``causal``: no mask, queries and keys aligned),
    or with ``softcap`` the same written out, as transformers' eager attention
    computes it: the scores soft-capped (``softcap * tanh(scores / softcap)``) before the
    mask, and the softmax in float32 (no fused kernel takes a soft cap)."""
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              scale=scaling, enable_gqa=gqa)
    if gqa:
        groups = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(groups, -3), v.repeat_interleave(groups, -3)
    scale = q.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool,
                          device=q.device).tril_(k.shape[-2] - q.shape[-2])
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)


def choose_kernels(device: torch.device) -> None:
    """On CUDA, scaled-dot-product attention without cuDNN's backend, for the whole process (a
    runtime serves one model). On one H200 (docs/llm-benchmark.md, "Measured 2026-12-04,
    16:16-16:32 UTC") steps of shapes not seen before took 2.3x as long at the median with
    cuDNN (the slowest 1.18 s against 71 ms), and served at c = 16 and 64 its attention calls held
    55 % of the engine thread against 12 % without."""
    if device.type == "cuda" and torch.backends.cuda.cudnn_sdp_enabled():  # type: ignore[no-untyped-call]
        torch.backends.cuda.enable_cudnn_sdp(False)
        log.info("attention runs without cuDNN's kernels (flash, memory-efficient, math)")


def register() -> None:
    """Make ``kubemaas_paged`` an attention implementation transformers models can be given."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention)
