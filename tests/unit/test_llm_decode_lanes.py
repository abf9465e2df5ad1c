"""The decode rows' lanes (llm/decode_lanes.py): each lane holds its row's keys and values as
the pool does, through rows joining, leaving, falling out of step and contexts growing; the
decode attention over the lanes gives what it gives over the pool; rows that would not fit the
budget leave the step to the pool."""

from __future__ import annotations

from itertools import count

import pytest
import torch
from tests.unit.llm_rows import decoding

from kubemaas_runtime.llm import decode_lanes
from kubemaas_runtime.llm.attention import paged_attention
from kubemaas_runtime.llm.decode_lanes import GRANULE, DecodeLanes
from kubemaas_runtime.llm.kv_cache import KVStore
from kubemaas_runtime.llm.packing import pack
from kubemaas_runtime.llm.scheduler import Sequence

BLOCK, KV_HEADS, DIM, LAYERS = 16, 2, 8, 2


@pytest.fixture(autouse=True)
def short_contexts_in_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' rows read little: lanes take them (but where a test says otherwise)."""
    monkeypatch.setattr(decode_lanes, "LANES_FROM_BYTES", 1)


def _store(blocks: int, dtype: torch.dtype = torch.float32) -> KVStore:
    torch.manual_seed(0)
    store = KVStore(LAYERS, blocks, BLOCK, KV_HEADS, DIM, dtype, torch.device("cpu"))
    for t in store.keys + store.values:
        t.normal_()
    return store


def _decoding(rid: int, context: int, blocks: count) -> Sequence:
    return decoding(rid, context, blocks, BLOCK)


def _assert_lanes_hold_the_pool(lanes: DecodeLanes, store: KVStore) -> None:
    for i, seq in enumerate(lanes.rows):
        n = seq.computed
        slots = torch.tensor([seq.blocks[p // BLOCK] * BLOCK + p % BLOCK for p in range(n)])
        for layer in lanes.layers:
            for pool, lane in ((store.keys, lanes.keys), (store.values, lanes.values)):
                assert torch.equal(lane[layer][i, :, :n], pool[layer][slots].transpose(0, 1))


def test_lanes_follow_rows_that_join_leave_and_fall_out_of_step() -> None:
    blocks = count(1)
    store = _store(400)
    lanes = DecodeLanes(store, BLOCK, 1 << 30)
    rows = [_decoding(i, 20 + 9 * i, blocks) for i in range(6)]
    assert lanes.arrange(rows) == rows
    assert lanes.filled == 6
    _assert_lanes_hold_the_pool(lanes, store)
    # rows 1 and 3 leave, two join, row 4 fell out of step (it missed a step's write)
    late = [_decoding(10 + i, 50 + i, blocks) for i in range(2)]
    rows[4].computed += 1
    arranged = lanes.arrange([rows[0], rows[2], rows[4], rows[5], *late])
    assert arranged is not None
    assert set(map(id, arranged)) == set(map(id, [rows[0], rows[2], rows[4], rows[5], *late]))
    assert arranged[0] is rows[0] and arranged[1] is rows[5] and arranged[2] is rows[2]
    assert lanes.filled == 6 + 3  # the two new rows and the one out of step; the rest moved
    _assert_lanes_hold_the_pool(lanes, store)


def _step(lanes: DecodeLanes, store: KVStore) -> None:
    """What a decode step does to the lanes' rows: writes each row's next token (the pool's
    keys and values there) and counts it."""
    positions = torch.tensor([s.computed for s in lanes.rows])
    slots = torch.tensor([s.blocks[s.computed // BLOCK] * BLOCK + s.computed % BLOCK
                          for s in lanes.rows])
    for layer in range(LAYERS):
        lanes.write(layer, store.keys[layer][slots], store.values[layer][slots], positions)
    for seq in lanes.rows:
        seq.computed += 1
    lanes.advanced()


def test_lanes_grow_past_a_granule_and_keep_their_size_until_twice_too_big() -> None:
    blocks = count(1)
    store = _store(400)
    lanes = DecodeLanes(store, BLOCK, 1 << 30)
    short, long = _decoding(1, 40, blocks), _decoding(2, GRANULE + 8, blocks)
    long.computed = GRANULE - 1  # its next token is the lanes' last
    lanes.arrange([short, long])
    assert lanes.keys[0].shape[2] == GRANULE
    _step(lanes, store)  # now its next one is past them: they grow, the rows kept
    lanes.arrange([short, long])
    assert lanes.keys[0].shape[2] == 2 * GRANULE and lanes.filled == 2
    _assert_lanes_hold_the_pool(lanes, store)
    lanes.arrange([short])  # one granule needed of two: kept (a resize copies every lane)
    assert lanes.keys[0].shape == (4, KV_HEADS, 2 * GRANULE, DIM)
    assert lanes.filled == 2


def test_rows_over_the_budget_leave_the_step_to_the_pool() -> None:
    blocks = count(1)
    store = _store(400)
    lane_bytes = 2 * LAYERS * KV_HEADS * DIM * 4 * GRANULE  # one row of one granule
    lanes = DecodeLanes(store, BLOCK, 3 * lane_bytes)
    rows = [_decoding(i, 30, blocks) for i in range(4)]
    assert lanes.arrange(rows[:3]) is not None
    assert lanes.keys[0].shape[0] == 3  # four lanes would not fit: exactly three
    assert lanes.arrange(rows) is None
    assert lanes.nbytes == 0 and lanes.rows == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_decode_attention_over_the_lanes_is_the_attention_over_the_pool(dtype: torch.dtype) -> None:
    blocks = count(1)
    store = _store(300, dtype)
    rows = [_decoding(i, c, blocks) for i, c in enumerate([70, 33, 140, 17, 96])]
    lanes = DecodeLanes(store, BLOCK, 1 << 30)
    arranged = lanes.arrange(rows)
    assert arranged is not None
    heads, new = 4, len(rows)
    query = torch.randn(1, heads, new, DIM, dtype=dtype)
    keys = torch.randn(1, KV_HEADS, new, DIM, dtype=dtype)
    values = torch.randn(1, KV_HEADS, new, DIM, dtype=dtype)
    outs = []
    for use_lanes in (False, True):
        step = pack(arranged, [], store, BLOCK).paged
        if use_lanes:
            step.lanes = lanes
            step.decode_positions = torch.tensor([s.computed for s in arranged])
        for layer in range(LAYERS):
            k, v = step.update(keys, values, layer)
            outs.append(paged_attention(None, query, k, v, None, kubemaas_step=step)[0])
    for pooled, laned in zip(outs[:LAYERS], outs[LAYERS:], strict=True):
        torch.testing.assert_close(laned, pooled)
    for seq in arranged:  # the new token is in the lanes too
        seq.computed += 1
    _assert_lanes_hold_the_pool(lanes, store)


def test_steps_that_read_little_read_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = count(1)
    store = _store(200)
    lanes = DecodeLanes(store, BLOCK, 1 << 30)
    layer_token = 2 * KV_HEADS * DIM * 4  # bytes of one token's keys and values in one layer
    monkeypatch.setattr(decode_lanes, "LANES_FROM_BYTES", 4 * 300 * layer_token)
    short = [_decoding(i, 40, blocks) for i in range(3)]
    assert lanes.arrange(short) is None
    long = _decoding(9, 300, blocks)  # four rows padded to 300 tokens: enough
    assert lanes.arrange([*short, long]) is not None
    assert lanes.arrange(short) is None  # the long row left: the lanes are given up
    assert lanes.nbytes == 0


def test_lanes_of_some_layers_hold_those_alone() -> None:
    """A model whose layers mix a sliding window and full attention keeps lanes for its full
    layers (here layer 1): the other's stay empty, nothing is written to them, and the budget
    counts the held layers' bytes (three rows of one granule in one layer fit where they
    would not in two)."""
    blocks = count(1)
    store = _store(400)
    lane_bytes = 2 * KV_HEADS * DIM * 4 * GRANULE  # one row of one granule, one layer
    lanes = DecodeLanes(store, BLOCK, 3 * lane_bytes, layers=[1])
    rows = [_decoding(i, 30 + 7 * i, blocks) for i in range(3)]
    assert lanes.arrange(rows) == rows
    assert lanes.keys[1].shape == (3, KV_HEADS, GRANULE, DIM)
    assert lanes.keys[0].numel() == lanes.values[0].numel() == 0
    assert lanes.nbytes == 3 * lane_bytes
    _step(lanes, store)
    assert lanes.arrange([rows[2], rows[0]]) is not None  # row 1 leaves: row 2 moves
    assert lanes.keys[0].numel() == 0
    _assert_lanes_hold_the_pool(lanes, store)
    with pytest.raises(ValueError, match="no layer"):
        DecodeLanes(store, BLOCK, 1 << 30, layers=[])
