"""The tensors of one engine step: its rows packed into one sequence ``[1, N]``.

Decode rows come first (one token each), then the prefill chunks. Every packed token gets its
position, the slot its keys and values are written to, and (through ``PagedStep``) the blocks of
the context it attends to; ``keep`` lists the packed tokens whose logits are sampled: every
decode row and the last token of each chunk that ends its prompt; after them, the positions
that score a prompt's tokens (prompt_scores.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.utils.rnn import pad_sequence

from .attention import Chunk, ChunkBatch, PagedStep
from .kv_cache import KVStore, window_start
from .prompt_scores import scored_span
from .scheduler import Sequence


@dataclass
class PackedStep:
    input_ids: torch.Tensor     # [1, N]
    position_ids: torch.Tensor  # [1, N]
    keep: torch.Tensor          # [K] packed indexes whose logits are needed (K >= 1)
    sampled: list[Sequence]     # the sequences the first logits are for (may be fewer than K)
    paged: PagedStep
    # (sequence, first position, count): the logits after the sampled ones, in this order,
    # score prompt tokens first + 1 .. first + count
    scored: list[tuple[Sequence, int, int]] = field(default_factory=list)


def slots(seq: Sequence, start: int, stop: int, block_size: int,
          windowed: bool = False) -> torch.Tensor:
    """KV slots of the sequence's positions ``start .. stop`` (``windowed``: in the windowed
    group's blocks, ``Sequence.window_blocks``)."""
    pos = torch.arange(start, stop)
    table = torch.tensor(_blocks(seq, windowed)[:-(-stop // block_size)], dtype=torch.long)
    return table[pos // block_size] * block_size + pos % block_size


def _blocks(seq: Sequence, windowed: bool) -> list[int]:
    """The sequence's blocks, or with ``windowed`` and two KV groups, its windowed group's."""
    if windowed and seq.window_blocks is not None:
        return seq.window_blocks
    return seq.blocks


def _decode_tables(decode: list[Sequence], block_size: int, window: int | None = None,
                   trim: bool = False, windowed: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block tables [B, W] (the scratch block 0 past a row's context), the mask
    [B, 1, 1, W * block_size] and each row's write slot [B]: three small tensors made from
    lists, whatever the batch (this runs every step, and on small models a step is a few
    milliseconds). With a sliding ``window`` a row's token sees its last ``window`` keys;
    with ``trim`` too, each row's table starts at the block of its first visible key (the
    blocks before it, given back or not, are neither gathered nor attended); ``windowed``:
    over the windowed group's blocks where there are two KV groups."""
    ctx = [s.computed + 1 for s in decode]
    held = [_blocks(s, windowed) for s in decode]
    starts = [max(0, n - window) // block_size for n in ctx] if trim and window else None
    if starts is None:
        width = -(-max(ctx) // block_size)
        table = torch.tensor([b[:width] + [0] * (width - min(width, len(b))) for b in held],
                             dtype=torch.long)
        keys: torch.Tensor = torch.arange(width * block_size)
    else:
        width = max(-(-n // block_size) - first for n, first in zip(ctx, starts, strict=True))
        rows = [b[first:first + width] for b, first in zip(held, starts, strict=True)]
        table = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        # each row's slots are its key positions from its first block on
        keys = torch.arange(width * block_size) + torch.tensor(starts)[:, None] * block_size
    ends = torch.tensor(ctx)[:, None]
    mask = keys < ends
    if window is not None:  # the token at ctx - 1 sees keys ctx - window .. ctx - 1
        mask &= keys >= ends - window
    write = torch.tensor([b[(n - 1) // block_size] * block_size + (n - 1) % block_size
                          for b, n in zip(held, ctx, strict=True)], dtype=torch.long)
    return table, mask[:, None, None, :], write


# Decode rows attend in groups of similar context width (on CPU) while a group's padded work
# (rows x its widest row's blocks) stays within PADDING_WASTE of the rows' own, and only when
# the split saves at least this many blocks of gathered and attended context in the step: one
# row of a 1,000-token context otherwise pads every short row of its step to 1,000 tokens.
GROUP_SAVES_BLOCKS = 256


def decode_groups(decode: list[Sequence], block_size: int
                  ) -> tuple[list[Sequence], list[tuple[int, int]] | None]:
    """The decode rows ordered by context, and (rows, width in blocks) per group; the rows
    unchanged and None when one padded call is as good (``PagedStep.decode_groups``)."""
    widths = [-(-(s.computed + 1) // block_size) for s in decode]
    widest = max(widths, default=0)
    if len(decode) * widest - sum(widths) < GROUP_SAVES_BLOCKS:  # every step: cheap first
        return decode, None
    order = sorted(range(len(decode)), key=widths.__getitem__)
    ordered = [decode[i] for i in order]
    groups: list[tuple[int, int]] = []
    rows = own = prev = 0
    for w in (widths[i] for i in order):  # the widest so far: the rows are in order
        if rows and (rows + 1) * w > PADDING_WASTE * (own + w):
            groups.append((rows, prev))
            rows = own = 0
        rows, own, prev = rows + 1, own + w, w
    groups.append((rows, prev))
    saved = len(decode) * prev - sum(n * w for n, w in groups)
    if len(groups) == 1 or saved < GROUP_SAVES_BLOCKS:
        return decode, None
    return ordered, groups


def pack(decode: list[Sequence], prefill: list[tuple[Sequence, int]], store: KVStore,
         block_size: int, groups: list[tuple[int, int]] | None = None,
         window: int | None = None, sliding: frozenset[int] = frozenset(),
         trim: bool = False) -> PackedStep:
    """The step's tensors; ``groups`` from ``decode_groups`` (the decode rows in its order);
    ``window``: the model's sliding window (each token attends to the keys of positions
    ``p - window + 1 .. p``, as transformers' ``sliding_window_overlay``), None: full-causal;
    ``sliding``: the layers that have it when others attend full-causal (the step then
    carries tables and masks of both kinds: ``PagedStep.sliding``; the windowed layers' decode
    tables start at each row's window, a chunk's at the block of the first key its first
    query sees: ``Chunk.window_first``); empty: every layer has it, and each prompt chunk's
    table starts at that block (``Chunk.first``); ``trim``: with a window on every layer, the
    decode rows' tables start at their windows too (``_decode_tables``; not when the rows
    attend over the decode lanes, which hold whole contexts)."""
    full = None if sliding else window  # the window of the step's ``mask`` masks
    # the decode rows first: a token each, at the position after its context
    ids = [seq.ids[seq.computed] for seq in decode]
    positions = [seq.computed for seq in decode]
    keep = list(range(len(decode)))
    sampled = list(decode)
    writes: list[torch.Tensor] = []
    scoring: list[int] = []
    scored: list[tuple[Sequence, int, int]] = []
    decode_blocks = decode_mask = window_decode_mask = window_decode_blocks = None
    # two KV groups: the windowed layers write their own group's slots
    grouped = bool(sliding) and any(s.window_blocks is not None
                                    for s in decode + [s for s, _ in prefill])
    window_writes: list[torch.Tensor] = []
    if decode:
        decode_blocks, decode_mask, decode_writes = _decode_tables(decode, block_size, full,
                                                                   trim)
        if sliding:  # the windowed layers' own tables, from each row's window on
            window_decode_blocks, window_decode_mask, window_decode_writes = _decode_tables(
                decode, block_size, window, trim=True, windowed=True)
            window_writes.append(window_decode_writes)
        writes.append(decode_writes)
    chunks = []
    for seq, n in prefill:
        start, offset = len(ids), seq.computed
        ids.extend(seq.ids[offset:offset + n])
        positions.extend(range(offset, offset + n))
        writes.append(slots(seq, offset, offset + n, block_size))
        if grouped:
            window_writes.append(slots(seq, offset, offset + n, block_size, windowed=True))
        chunks.append(_chunk(seq, start, n, block_size, full, window if sliding else None))
        if seq.scoring:
            _score_rows(seq, start, n, scoring, scored)
        if offset + n == len(seq.ids):
            keep.append(len(ids) - 1)
            sampled.append(seq)
    paged = PagedStep(store, block_size, torch.cat(writes) if len(writes) > 1 else writes[0],
                      len(decode), decode_blocks, decode_mask, chunks,
                      _units(chunks, block_size, bool(decode) and store.keys[0].is_cpu, window,
                             bool(sliding)),
                      groups, sliding=sliding, window_decode_mask=window_decode_mask,
                      window_decode_blocks=window_decode_blocks,
                      window_write_slots=torch.cat(window_writes) if grouped else None)
    keep.extend(scoring)
    return PackedStep(torch.tensor([ids]), torch.tensor([positions]),
                      torch.tensor(keep or [len(ids) - 1]), sampled, paged, scored)


def _score_rows(seq: Sequence, start: int, n: int, scoring: list[int],
                scored: list[tuple[Sequence, int, int]]) -> None:
    """A scored prompt's chunk of ``n`` tokens at packed index ``start``: the packed rows
    whose logits score its prompt's tokens (``scoring``) and the span they cover
    (``scored``: the sequence, its first scored token, how many)."""
    assert seq.prompt_logprobs is not None
    offset = seq.computed
    lo, hi = scored_span(len(seq.prompt_logprobs), len(seq.prompt), offset, n)
    if lo < hi:
        scoring.extend(range(start + lo - offset, start + hi - offset))
        scored.append((seq, lo, hi - lo))


def _chunk(seq: Sequence, start: int, n: int, block_size: int, window: int | None,
           sliding: int | None) -> Chunk:
    """The chunk of ``seq``'s next ``n`` tokens at packed index ``start``: its table from the
    block of the first key its first query sees under ``window`` (every layer's), and with
    ``sliding`` (the windowed layers' window where others attend full-causal) their own
    table and mask, from the block of the first key that window lets it see."""
    offset = seq.computed
    end = -(-(offset + n) // block_size)
    first = window_start(offset, window, block_size)
    table = torch.tensor(seq.blocks[first // block_size:end], dtype=torch.long)
    chunk = Chunk(start, n, offset, table, _chunk_mask(offset, n, window, first), first=first)
    if sliding is not None:
        chunk.window_first = window_start(offset, sliding, block_size)
        chunk.window_blocks = torch.tensor(
            _blocks(seq, True)[chunk.window_first // block_size:end], dtype=torch.long)
        chunk.window_mask = _chunk_mask(offset, n, sliding, chunk.window_first)
    return chunk


def _chunk_mask(offset: int, n: int, window: int | None, first: int = 0
                ) -> torch.Tensor | None:
    """A chunk's mask [n, offset + n - first] over the keys of positions ``first ..``
    (key j seen by the query at position p: j <= p, and j > p - window with a window); None
    where sdpa's own causal mask is the same (offset 0, the chunk within the window)."""
    if not offset and (window is None or n <= window):
        return None
    keys = torch.arange(first, offset + n)[None, :]
    queries = torch.arange(offset, offset + n)[:, None]
    mask = keys <= queries
    if window is not None:
        mask &= keys > queries - window
    return mask


# A chunk this long attends on its own: its call's overhead is small beside its work, and a
# causal call alone skips the masked half that a padded batch computes.
ALONE_FROM = 256
# Chunks attend together while the padded batch's work (C x L queries x W blocks) stays within
# this factor of theirs.
PADDING_WASTE = 1.5


def _units(chunks: list[Chunk], block_size: int, traced: bool, window: int | None = None,
           mixed: bool = False) -> list[Chunk | ChunkBatch] | None:
    """``PagedStep.units``. With ``traced`` (decode rows on a CPU), a short chunk alone is a
    batch of one: the same call a run of chunks makes, its layout in tensors, so that a traced
    graph replays such a step (traced_decode.py), where a lone chunk's Python (its offsets,
    causal or masked) would be frozen into the graph. On a GPU it keeps its causal kernel."""
    if len(chunks) > 1:
        return attention_units(chunks, block_size, window, mixed)
    if chunks and traced and chunks[0].length < ALONE_FROM:
        return [batch(chunks, block_size, window, mixed)]
    return None


def attention_units(chunks: list[Chunk], block_size: int, window: int | None = None,
                    mixed: bool = False) -> list[Chunk | ChunkBatch]:
    """The step's chunks as attention calls, in packed order: runs of consecutive short chunks
    of similar size become one ``ChunkBatch`` each. One pass, the run's totals kept as it grows
    (a step may hold as many chunks as --max-num-seqs)."""
    units: list[Chunk | ChunkBatch] = []
    run: list[Chunk] = []
    longest = widest = work = 0

    def close() -> None:
        units.extend(run if len(run) == 1 else [batch(run, block_size, window, mixed)])
        run.clear()
    for c in chunks:
        if c.length >= ALONE_FROM:
            if run:
                close()
            units.append(c)
            continue
        width = c.blocks.numel()
        if run:
            grown_longest, grown_widest = max(longest, c.length), max(widest, width)
            padded = (len(run) + 1) * grown_longest * grown_widest
            if padded > PADDING_WASTE * (work + c.length * width):
                close()
        if not run:
            longest = widest = work = 0
        run.append(c)
        longest, widest, work = max(longest, c.length), max(widest, width), work + c.length * width
    if run:
        close()
    return units


def batch(run: list[Chunk], block_size: int, window: int | None = None,
          mixed: bool = False) -> ChunkBatch:
    """Consecutive chunks as one padded attention call (attention.ChunkBatch); ``window``:
    as ``pack``'s; ``mixed``: in ``window_mask`` (``mask`` full-causal), else in ``mask``."""
    width = max(c.blocks.numel() for c in run)
    length = max(c.length for c in run)
    lengths = torch.tensor([c.length for c in run])
    query = torch.minimum(torch.arange(length)[None, :], lengths[:, None] - 1)  # [C, L]
    rows = torch.tensor([c.start for c in run])[:, None] + query
    position = torch.tensor([c.offset for c in run])[:, None] + query
    mask = _batch_mask(run, position, width * block_size, None if mixed else window, False)
    windowed = window_blocks = None
    if mixed and window is not None:  # the windowed layers' own tables, from each window on
        tables = [c.blocks if c.window_blocks is None else c.window_blocks for c in run]
        window_blocks = pad_sequence(tables, batch_first=True)
        windowed = _batch_mask(run, position, window_blocks.shape[1] * block_size, window,
                               True)[:, None]
    blocks = pad_sequence([c.blocks for c in run], batch_first=True)  # 0: the scratch block
    real = (torch.arange(len(run))[:, None] * length + torch.arange(length)[None, :]
            )[torch.arange(length)[None, :] < lengths[:, None]]
    return ChunkBatch(rows.reshape(-1), blocks, mask[:, None], real, windowed, window_blocks)


def _batch_mask(run: list[Chunk], position: torch.Tensor, keys_wide: int,
                window: int | None, own: bool) -> torch.Tensor:
    """[C, L, keys_wide]: key j (counted from each chunk's first key: ``Chunk.window_first``
    with ``own``, the windowed layers' tables, else ``Chunk.first``) seen by the query at
    ``position`` [C, L]: j <= p, and j > p - window with a window."""
    keys = torch.arange(keys_wide)[None, None, :]
    firsts = [c.window_first if own and c.window_blocks is not None else c.first for c in run]
    if any(firsts):
        keys = keys + torch.tensor(firsts)[:, None, None]
    mask = keys <= position[:, :, None]
    if window is not None:
        mask &= keys > position[:, :, None] - window
    return mask
