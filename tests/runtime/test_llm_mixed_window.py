"""A model whose layers mix a sliding window and full attention: its windowed layers read only
the KV blocks their window reaches.

Qwen2 with ``max_window_layers`` (its last two of four layers windowed), Gemma 2 (layers 0 and
2) and Gemma 3 (layers 0-2), window 12, blocks of 8: the sequences keep every block (the full
layers read every key), and the windowed layers' decode tables start at each row's window, a
prompt chunk's at the block of the first key its first query sees. Shown against transformers'
greedy answers, token for token: after every step the windowed layers' keys and values of the
blocks no window reaches any more are overwritten with NaN (read, even masked, a NaN makes the
step's output NaN: 0 x NaN), and concurrent prompts several windows long, read in chunks that
cross the window's and the blocks' edges beside the others' decodes, answer as generate() on
every path (single chunks, chunk batches, decode rows whole, in width groups, beside the decode
lanes; on the direct stack, steps of decodes and of decodes with a chunk batch from
the traced graphs, with and without the lanes, and decode steps through CUDA graphs' padded
inputs on the CPU); every windowed call's table spans at most
its length + the window + 2 blocks; a prefix-cache hit past the window answers as generate()
too. With two KV groups: a prefix hit in the smallest budget is admitted, and requests that
go away midway (queued, reading, decoding, preempted) leave every block of both groups free."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from kubemaas_runtime.llm import engine as engine_module
from kubemaas_runtime.llm import packing
from kubemaas_runtime.llm.attention import ChunkBatch
from kubemaas_runtime.llm.cuda_graphs import GraphedDecode
from kubemaas_runtime.llm.engine import Engine
from kubemaas_runtime.llm.kv_cache import window_start
from kubemaas_runtime.llm.loader import LanguageModel, load_hf
from kubemaas_runtime.llm.sampling import SamplingParams
from kubemaas_runtime.llm.scheduler import Sequence
from tests.runtime.test_llm_sliding_window import MIXED, SLIDING, WINDOW, prompts, windowed
from tests.runtime.test_llm_window_kv import generate, run_bounded, small_engine

BLOCK = 8
FAMILIES = {"qwen2": MIXED, "gemma2": SLIDING["gemma2"], "gemma3_text": SLIDING["gemma3_text"]}


@pytest.fixture(scope="module", params=list(FAMILIES))
def mixed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[LanguageModel, Any]:
    """A tiny model of the family, its layers mixing the window and full attention: the model
    served and transformers' own."""
    family: str = request.param
    model_dir = windowed(tmp_path_factory.mktemp(family), family, **FAMILIES[family])
    lm = load_hf(model_dir, device="cpu")
    assert lm.window == WINDOW and lm.sliding and len(lm.sliding) < lm.num_layers
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    model.generation_config.eos_token_id = None
    return lm, model


def poison_out_of_window(engine: Engine) -> None:
    """After every step, the windowed layers' keys and values in each running sequence's
    blocks that no later query of it sees (before the block of its next token's first visible
    key) NaN; a block that left them (its sequence finished) back to finite values."""
    step, lm = engine.step, engine.lm
    assert lm.window is not None
    poisoned: set[int] = set()

    def fill(blocks: set[int], value: float) -> None:
        if blocks:
            slots = torch.tensor([b * BLOCK + i for b in sorted(blocks) for i in range(BLOCK)])
            for layer in lm.sliding:
                engine.store.keys[layer][slots] = value
                engine.store.values[layer][slots] = value

    def poisoning() -> Any:
        out = step()
        assert lm.window is not None
        dead = {b for seq in engine.scheduler.running
                for b in windowed_blocks(seq)[:window_start(seq.computed, lm.window, BLOCK)
                                              // BLOCK]} - {0}
        fill(poisoned - dead, 1e3)
        fill(dead, float("nan"))
        poisoned.clear()
        poisoned.update(dead)
        if engine.window_pool is not None:  # the windowed group's given-back blocks: finite
            fill(set(engine.window_pool.unused()) | {0}, 1e3)  # (masked reads: 0 x 1e3 is 0)
        return out
    engine.step = poisoning  # type: ignore[method-assign]


def windowed_blocks(seq: Sequence) -> list[int]:
    """The blocks the windowed layers' keys and values of ``seq`` are in (two KV groups:
    the windowed group's, 0s where given back)."""
    return seq.blocks if seq.window_blocks is None else seq.window_blocks


def watch_reuse(engine: Engine) -> set[int]:
    """The windowed group's blocks that one sequence gave back and another running sequence
    took while the first was still running (filled after every step)."""
    step, reused = engine.step, set[int]()
    gave: dict[int, Sequence] = {}  # block -> the running sequence that gave it back

    def watched() -> Any:
        out = step()
        running = engine.scheduler.running
        held = {b: s for s in running for b in windowed_blocks(s) if b}
        reused.update(b for b, s in held.items() if b in gave and gave[b] is not s
                      and gave[b] in running)
        for s in running:
            for b in windowed_blocks(s)[:s.window_freed]:
                assert b == 0
        for b, s in list(gave.items()):
            if s not in running or b in held:
                del gave[b]
        assert engine.window_pool is not None
        free = set(engine.window_pool.unused())
        for s in running:
            for b in last_windowed.get(s.rid, []):
                if b and b in free:
                    gave[b] = s
        last_windowed.clear()
        last_windowed.update({s.rid: list(windowed_blocks(s)) for s in running})
        return out
    last_windowed: dict[int, list[int]] = {}
    engine.step = watched  # type: ignore[method-assign]
    return reused


def watch_windowed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(queries, keys) of every windowed attention call: a decode table's (1 query), a chunk's
    or a chunk batch's (its longest chunk); keys: the table's width times the block size."""
    calls: list[tuple[int, int]] = []
    pack = packing.pack

    def spied(*args: Any, **kwargs: Any) -> Any:
        step = pack(*args, **kwargs)
        paged = step.paged
        assert paged.sliding
        if paged.decode_rows:
            assert paged.window_decode_blocks is not None
            calls.append((1, paged.window_decode_blocks.shape[1] * BLOCK))
        for unit in paged.chunks if paged.units is None else paged.units:
            if isinstance(unit, ChunkBatch):
                assert unit.window_blocks is not None
                calls.append((unit.mask.shape[2], unit.window_blocks.shape[1] * BLOCK))
            else:
                assert unit.window_blocks is not None
                calls.append((unit.length, unit.window_blocks.numel() * BLOCK))
        return step
    monkeypatch.setattr(engine_module, "pack", spied)
    return calls


@pytest.mark.parametrize("kv_groups", [False, True], ids=["one-pool", "kv-groups"])
@pytest.mark.parametrize("path", ["eager", "grouped", "lanes", "traced", "graphs"])
def test_windowed_layers_read_only_their_windows(path: str, kv_groups: bool,
                                                 mixed: tuple[LanguageModel, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Four prompts 1 to 11 windows long read 20 tokens a step beside the others' decodes,
    then 50 tokens each: the windowed layers' keys past every window NaN after each step, the
    answers are generate()'s (before, those layers read every key, masked: NaN answers).
    With two KV groups, the windowed blocks given back are reused by the other sequences
    while the first still decode (free blocks: large finite values after every step)."""
    torch.set_num_threads(1)
    lm, model = mixed
    if path == "grouped":  # decode rows attend in groups of similar width (packing.py)
        monkeypatch.setattr(packing, "GROUP_SAVES_BLOCKS", 1)
    engine = small_engine(lm, 120 if kv_groups else 80, BLOCK, batched=20,
                          path=path if path in ("lanes", "traced", "graphs") else "eager",
                          max_model_len=200 if kv_groups else 400, prefix_caching=False,
                          kv_groups=kv_groups)
    assert (engine.window_pool is not None) == kv_groups
    reused = watch_reuse(engine) if kv_groups else set()
    # decode steps from the traced graph (with the lanes too): the three are on the direct stack
    assert lm.stack is not None
    assert (engine.traced is not None) == (path in ("lanes", "traced"))
    calls = watch_windowed(monkeypatch)
    poison_out_of_window(engine)
    lanes = []
    if path == "lanes":
        assert engine.lanes is not None
        for_step = engine.lanes.for_step

        def spied(*args: Any) -> Any:
            arranged = for_step(*args)
            lanes.append(arranged is not None)
            if arranged is not None:  # lanes for the full layers alone
                assert engine.lanes is not None
                held = {i for i, t in enumerate(engine.lanes.keys) if t.numel()}
                assert held == set(range(lm.num_layers)) - lm.sliding
            return arranged
        monkeypatch.setattr(engine.lanes, "for_step", spied)
        monkeypatch.setattr("kubemaas_runtime.llm.decode_lanes.LANES_FROM_BYTES", 0)
    batch = prompts([13, 45, 90, 133], seed=21)
    params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)
    outs = engine.generate_sync(batch, params)
    for prompt, out in zip(batch, outs, strict=True):
        assert out == generate(model, prompt, 50), len(prompt)
    assert engine.scheduler.preemptions == 0 and engine.peak_running == 4
    assert calls and max(keys for _, keys in calls) <= 20 + WINDOW + 2 * BLOCK
    for queries, keys in calls:
        assert keys <= queries + WINDOW + 2 * BLOCK, (queries, keys)
    if kv_groups:  # a windowed block given back was taken by another running sequence
        assert reused
    if path == "lanes":
        assert any(lanes)
    if path == "graphs":  # CUDA graphs' padded, fixed-width inputs (capture=False)
        graphed = engine._model_step
        assert isinstance(graphed, GraphedDecode) and graphed.replays > 0
    if engine.traced is not None:
        assert not engine.traced.failed and engine.traced.replays_with_prompts > 0
        assert engine.traced.replays > engine.traced.replays_with_prompts


@pytest.mark.parametrize("kv_groups", [False, True], ids=["one-pool", "kv-groups"])
def test_a_prefix_hit_past_the_window(kv_groups: bool, mixed: tuple[LanguageModel, Any],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A 150-token prompt read in one chunk and in chunks of 20, then one that shares its
    first 120 tokens from the prefix cache and reads the rest: every windowed call's table
    spans its window, and the answers are generate()'s."""
    torch.set_num_threads(1)
    lm, model = mixed
    engine = small_engine(lm, 120, BLOCK, batched=20, max_model_len=400, kv_groups=kv_groups)
    # the pacer counts the layers' average reads (scheduler.Mixed); every block is kept
    assert engine.scheduler.mixed == (WINDOW, len(lm.sliding) / lm.num_layers)
    assert engine.scheduler.window is None
    calls = watch_windowed(monkeypatch)
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    base, tail = prompts([150, 27], seed=22)
    assert engine.generate_sync([base], params) == [generate(model, base, 30)]
    engine.pool.hit_tokens = 0
    hit = base[:120] + tail
    assert engine.generate_sync([hit], params) == [generate(model, hit, 30)]
    assert engine.pool.hit_tokens == 120
    for queries, keys in calls:
        assert keys <= queries + WINDOW + 2 * BLOCK, (queries, keys)
    assert engine.pool.used == 0
    assert engine.window_pool is None or engine.window_pool.used == 0


@pytest.mark.parametrize("shared", [False, True], ids=["split", "shared-pages"])
def test_a_prefix_hit_in_the_smallest_kv_groups_is_admitted(
        shared: bool, mixed: tuple[LanguageModel, Any]) -> None:
    """Two KV groups in the smallest budget the engine takes for max-model-len 256 (the
    windowed group: 3 or 4 blocks of 8, window 12): a prompt that goes on three blocks past a
    cached one hits its window's 2 windowed blocks; admission asked for 3 more besides them and,
    with nothing running, the request waited forever (a beam search over the server hung so).
    Now the hit counts towards the window's blocks, and the answer is generate()'s."""
    torch.set_num_threads(1)
    lm, model = mixed
    engine = next(e for e in (_engine_or_none(lm, blocks, shared) for blocks in range(1, 64))
                  if e)
    assert engine.window_pool is not None
    # (the split's windowed group: a few blocks; one pool of pages: the bytes of a few more
    # blocks of every layer than one sequence's window and context)
    assert shared or engine.window_pool.usable < 5
    base, tail = prompts([90, 20], seed=23)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    run_bounded(engine, base, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
    engine.pool.hit_tokens = 0
    assert run_bounded(engine, base + tail, params) == generate(model, base + tail, 8)
    assert engine.pool.hit_tokens == 88
    assert engine.pool.used == 0 and engine.window_pool.used == 0


def _engine_or_none(lm: LanguageModel, blocks: int, shared: bool = False) -> Engine | None:
    """Two KV groups in the bytes of ``blocks`` blocks of every layer, or None when the
    engine refuses them (too small for one sequence of max-model-len 256)."""
    try:
        return small_engine(lm, blocks, BLOCK, batched=2048, max_model_len=256,
                            kv_groups=True, kv_shared=shared)
    except ValueError:
        return None


def test_requests_gone_midway_leave_no_block_in_either_group(
        mixed: tuple[LanguageModel, Any]) -> None:
    """Two KV groups in a small budget: ten requests sharing a prefix longer than the window
    (prefix hits in both groups), read 24 tokens a step, several preempted and read again;
    at steps 5, 17, 29 and 41 the newest request still waiting or running goes away
    (mid-prompt, mid-decode, preempted or queued). The others answer as generate(), and
    afterwards every block of both groups is free again, none still referenced."""
    torch.set_num_threads(1)
    lm, model = mixed
    # (the budget that preempts: Gemma 3's windowed group, 3 layers of 4, takes more of it)
    blocks = 11 if model.config.model_type == "gemma3_text" else 14
    engine = small_engine(lm, blocks, BLOCK, batched=24, max_model_len=128, kv_groups=True)
    assert engine.window_pool is not None
    (base,) = prompts([60], seed=41)
    tails = prompts([3 + 4 * i for i in range(10)], seed=42)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    seqs = [engine.sequence(base[:20 + 4 * i] + tail, params) for i, tail in enumerate(tails)]
    gone = set()
    for step in range(400):
        if step % 2 == 0 and step // 2 < len(seqs):  # one arrives every other step
            engine.scheduler.add(seqs[step // 2])
        if step in (5, 17, 29, 41):
            live = [*engine.scheduler.running, *engine.scheduler.waiting]
            if live:
                victim = max(live, key=lambda s: s.rid)
                gone.add(victim.rid)
                engine._apply([("abort", victim)])
        if not engine._has_work() and step // 2 >= len(seqs):
            break
        engine.step()
    assert not engine._has_work()
    assert len(gone) == 4 and engine.scheduler.preemptions > 0
    assert engine.pool.hit_tokens > 0
    for seq in seqs:
        if seq.rid not in gone:
            assert seq.output == generate(model, seq.prompt, 24), len(seq.prompt)
    for pool in (engine.pool, engine.window_pool):
        assert pool.free == pool.usable and not any(pool._refs)
