"""A model whose every layer attends to a sliding window holds only its window's KV blocks.

The blocks that slide wholly out of a running sequence's window go back to the pool
(scheduler.Scheduler.slide), their places in its block table pointing at the scratch block,
which the windowed masks leave out; the decode rows' tables start at their windows. Shown here
against transformers' greedy answers, token for token: the blocks a long sequence holds stay
bounded; a KV cache too small for one full-length sequence serves several windowed ones at once
with no preemption; the freed blocks, reused by other sequences and overwritten between steps
with large values (as is the scratch block), are never read (eager steps, decode rows in groups,
the traced decode, CUDA graphs' padded inputs on the CPU); prefix-cache hits on blocks that a
sequence gave back, and misses once they were evicted; a hit on the blocks a continued
prompt's window sees once its first blocks were evicted (vLLM's windowed lookup); a prompt
chunk's attention reads only the blocks its window reaches. A model whose layers mix windowed
and full attention keeps every block."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from kubemaas_runtime.llm import engine as engine_module
from kubemaas_runtime.llm import packing
from kubemaas_runtime.llm.attention import ChunkBatch
from kubemaas_runtime.llm.cuda_graphs import GraphedDecode
from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.kv_cache import BlockPool, KVStore
from kubemaas_runtime.llm.loader import LanguageModel, load_hf
from kubemaas_runtime.llm.sampling import SamplingParams
from tests.runtime.test_llm_sliding_window import MIXED, prompts, windowed


def generate(model: Any, prompt: list[int], n: int, _eos: Any = None) -> list[int]:
    """transformers' greedy answer of ``n`` tokens, an EOS token not ending it (the engine's
    ``ignore_eos``)."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    ids = [int(t) for t in out[0, len(prompt):]]
    assert len(ids) == n
    return ids


def small_engine(lm: LanguageModel, blocks: int, block_size: int, batched: int,
                 path: str = "eager", max_model_len: int | None = None,
                 prefix_caching: bool = True, kv_groups: bool = False,
                 kv_shared: bool = True) -> Engine:
    """An engine whose KV cache holds ``blocks`` usable blocks (with ``kv_groups``, a mixed
    model's: the bytes of that many blocks of every layer, split between its two groups)."""
    per_block = KVStore.bytes_per_block(lm.num_layers, block_size, lm.kv_heads, lm.head_dim,
                                        lm.dtype)
    cfg = EngineConfig(kv_cache_bytes=(blocks + 1) * per_block,
                       max_model_len=max_model_len or lm.max_position, max_num_seqs=8,
                       max_num_batched_tokens=batched, block_size=block_size,
                       prefix_caching=prefix_caching,
                       traced_decode=path in ("traced", "lanes"), decode_lanes=path == "lanes",
                       kv_groups=kv_groups, kv_shared=kv_shared)
    engine = Engine(lm, cfg)
    # (a model whose layers mix windows: two KV groups split those bytes, kv_groups.py)
    assert engine.pool.usable == blocks or engine.window_pool is not None
    if path == "graphs":
        assert lm.stack is not None
        engine._model_step = GraphedDecode(lm.stack, engine.store, block_size, lm.vocab_size,
                                           cfg.max_num_seqs, capture=False,
                                           sliding=lm.sliding, window=lm.window,
                                           grouped=engine.window_pool is not None)
    return engine


def watch(engine: Engine, poison: bool = False) -> list[int]:
    """The pool's used blocks after every step; with ``poison``, every block on the free list
    and the scratch block overwritten with large values after each step (a step that read one
    of them unmasked would change its logits)."""
    used: list[int] = []
    step = engine.step
    gen = torch.Generator().manual_seed(7)

    def watched() -> Any:
        out = step()
        used.append(engine.pool.used)
        if poison:
            bs = engine.pool.block_size
            slots = torch.tensor([b * bs + i for b in [0, *engine.pool._free]
                                  for i in range(bs)])
            for pool in engine.store.keys + engine.store.values:
                pool[slots] = torch.randn(pool[slots].shape, generator=gen) * 1e3
        return out
    engine.step = watched  # type: ignore[method-assign]
    return used


def watch_tables(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The width in blocks of every step's decode tables."""
    widths: list[int] = []
    pack = packing.pack

    def spied(*args: Any, **kwargs: Any) -> Any:
        step = pack(*args, **kwargs)
        if step.paged.decode_blocks is not None:
            widths.append(step.paged.decode_blocks.shape[1])
        return step
    monkeypatch.setattr(engine_module, "pack", spied)
    return widths


def watch_chunks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """(position, length, keys) of every prompt chunk's attention call: a chunk's own (its
    offset), or a batch's (its chunks' first offset, longest chunk); keys: the block table's
    width times the block size, the keys it gathers and scores."""
    calls: list[tuple[int, int, int]] = []
    pack = packing.pack

    def spied(*args: Any, **kwargs: Any) -> Any:
        step = pack(*args, **kwargs)
        paged = step.paged
        bs = paged.block_size
        for unit in paged.chunks if paged.units is None else paged.units:
            if isinstance(unit, ChunkBatch):
                calls.append((int(step.position_ids[0, unit.rows[0]]), unit.mask.shape[2],
                              unit.blocks.shape[1] * bs))
            else:
                calls.append((unit.offset, unit.length, unit.blocks.numel() * bs))
        return step
    monkeypatch.setattr(engine_module, "pack", spied)
    return calls


@pytest.fixture(scope="module")
def mistral(tmp_path_factory: pytest.TempPathFactory) -> tuple[LanguageModel, Any]:
    """A tiny Mistral with a 12-token window: the model served and transformers' own."""
    model_dir = windowed(tmp_path_factory.mktemp("w12"), "mistral", sliding_window=12)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    model.generation_config.eos_token_id = None
    return load_hf(model_dir, device="cpu"), model


def test_a_long_windowed_sequence_holds_its_window_alone(tmp_path: Path) -> None:
    """Block size 16, window 32: a 400-token sequence held all of its 25 blocks; now at most
    the window's and the next (3), and its answer is generate()'s."""
    torch.set_num_threads(1)
    model_dir = windowed(tmp_path, "mistral", sliding_window=32)
    lm = load_hf(model_dir, device="cpu")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    model.generation_config.eos_token_id = None
    engine = small_engine(lm, 130, 16, batched=2048)
    used = watch(engine)
    (prompt,) = prompts([20], seed=4)
    params = SamplingParams(max_tokens=380, temperature=0.0, ignore_eos=True)
    assert engine.generate_sync([prompt], params) == [generate(model, prompt, 380, frozenset())]
    assert max(used[:-1]) <= 3, max(used)
    assert engine.pool.used == 0


@pytest.mark.parametrize("path", ["eager", "grouped", "traced", "graphs"])
def test_freed_blocks_are_never_read(path: str, mistral: tuple[LanguageModel, Any],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Four requests of different lengths, prompts and outputs several windows long, their
    prompts read 16 tokens a step across the window's edge beside the others' decodes, in a
    cache of 24 blocks of 8 (a full-length sequence of 2048 would need 256): every block given
    back is reused or overwritten, and the answers stay generate()'s, with no preemption."""
    torch.set_num_threads(1)
    lm, model = mistral
    if path == "grouped":  # decode rows attend in groups of similar width (packing.py)
        monkeypatch.setattr(packing, "GROUP_SAVES_BLOCKS", 1)
        grouped: list[bool] = []

        def spied(*args: Any) -> Any:
            rows, groups = packing.decode_groups(*args)
            grouped.append(groups is not None)
            return rows, groups
        monkeypatch.setattr(engine_module, "decode_groups", spied)
    engine = small_engine(lm, 24, 8, batched=16, path="eager" if path == "grouped" else path,
                          prefix_caching=False)
    tables = watch_tables(monkeypatch)
    used = watch(engine, poison=True)
    batch = prompts([5, 29, 44, 61], seed=5)
    params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)
    outs = engine.generate_sync(batch, params)
    for prompt, out in zip(batch, outs, strict=True):
        assert out == generate(model, prompt, 50, frozenset()), len(prompt)
    assert engine.scheduler.preemptions == 0 and engine.peak_running == 4
    assert max(used) <= 24 and engine.pool.used == 0
    # the decode rows' tables span their windows: at most 3 blocks (window 12, blocks of 8)
    assert tables and max(tables) <= 3
    if path == "grouped":
        assert any(grouped)
    if path == "traced":
        assert engine.traced is not None and engine.traced.replays > 0


@pytest.mark.parametrize("path", ["eager", "traced"])
def test_a_prompt_chunk_reads_only_what_its_window_sees(path: str,
                                                        mistral: tuple[LanguageModel, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Three prompts 8, 11 and 32 windows long (window 12, blocks of 8) read together 20
    tokens a step (chunks that start and end inside blocks, across the window's edge) beside
    the others' decodes, the blocks given back poisoned; then a prompt that shares 200 tokens
    of the longest from the prefix cache: every chunk's attention reads at most its length +
    the window + 2 blocks of keys (it read its whole context: 400 keys at the longest's end),
    and every answer is generate()'s."""
    torch.set_num_threads(1)
    lm, model = mistral
    engine = small_engine(lm, 120, 8, batched=20, path=path)
    calls = watch_chunks(monkeypatch)
    watch(engine, poison=True)
    batch = prompts([100, 133, 390], seed=11)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    outs = engine.generate_sync(batch, params)
    for prompt, out in zip(batch, outs, strict=True):
        assert out == generate(model, prompt, 12), len(prompt)
    assert engine.scheduler.preemptions == 0 and engine.peak_running == 3
    (tail,) = prompts([37], seed=12)
    engine.pool.hit_tokens = 0
    hit = batch[2][:200] + tail
    assert engine.generate_sync([hit], params) == [generate(model, hit, 12)]
    assert engine.pool.hit_tokens == 200 // 8 * 8
    assert max(position for position, _, _ in calls) >= 360  # 30 windows in
    for position, length, keys in calls:
        assert keys <= length + 12 + 2 * 8, (position, length, keys)
    if path == "traced":
        assert engine.traced is not None and engine.traced.replays_with_prompts > 0


def test_a_cache_too_small_for_one_full_sequence_serves_several(
        mistral: tuple[LanguageModel, Any]) -> None:
    """A cache of 16 blocks of 8 tokens held no sequence of max-model-len 256 (32 blocks: the
    engine refused to start); a windowed sequence needs 3 (and its prompt chunk's), so four
    sequences of 100 to 130 tokens (59 blocks in all) run together in it, with no
    preemption."""
    torch.set_num_threads(1)
    lm, model = mistral
    engine = small_engine(lm, 16, 8, batched=16, max_model_len=256)
    used = watch(engine, poison=True)
    batch = prompts([30, 40, 50, 60], seed=6)
    params = SamplingParams(max_tokens=70, temperature=0.0, ignore_eos=True)
    outs = engine.generate_sync(batch, params)
    for prompt, out in zip(batch, outs, strict=True):
        assert out == generate(model, prompt, 70, frozenset()), len(prompt)
    assert engine.scheduler.preemptions == 0 and engine.peak_running == 4
    assert max(used) <= 16


def run_bounded(engine: Engine, prompt: list[int], params: SamplingParams,
                steps: int = 100) -> list[int]:
    """The engine's answer to ``prompt``, stepped here at most ``steps`` times (a request that
    waits forever fails the test instead of hanging it)."""
    seq = engine.sequence(prompt, params)
    engine.scheduler.add(seq)
    for _ in range(steps):
        if not engine._has_work():
            return seq.output
        engine.step()
    raise AssertionError(f"not done in {steps} steps: {len(engine.scheduler.waiting)} "
                         f"waiting, {len(engine.scheduler.running)} running")


def test_a_prefix_hit_in_a_cache_of_one_window_is_admitted(
        mistral: tuple[LanguageModel, Any]) -> None:
    """A cache of 3 blocks of 8, what one sequence of window 12 holds: a prompt that goes on
    two blocks past a cached one hits its window's 2 blocks; admission asked for 2 more besides
    them (4 > 3) and, with nothing running, the request waited forever (0 running, 1 waiting).
    Now the hit counts towards the blocks a windowed sequence holds, and the answer is
    generate()'s."""
    torch.set_num_threads(1)
    lm, model = mistral
    engine = small_engine(lm, 3, 8, batched=2048, max_model_len=256)
    assert engine.scheduler.live_blocks == 3
    base, tail = prompts([90, 20], seed=23)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    run_bounded(engine, base, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
    engine.pool.hit_tokens = 0
    assert run_bounded(engine, base + tail, params) == generate(model, base + tail, 8)
    assert engine.pool.hit_tokens == 88 and engine.pool.used == 0


def test_prefix_cache_hits_on_given_back_blocks(mistral: tuple[LanguageModel, Any]) -> None:
    """A sequence's blocks given back stay cached: a request with its prompt (and more) hits
    them, while it runs and after; once other requests evicted them, a request with that
    prompt misses and computes it again. Every answer is generate()'s."""
    torch.set_num_threads(1)
    lm, model = mistral
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    engine = small_engine(lm, 24, 8, batched=16)
    (base,) = prompts([60], seed=8)
    tail, other = prompts([9, 70], seed=9)
    # the second arrives after the first read 48 tokens of its prompt (blocks 0..3 given
    # back, still cached; 4 and 5 held): it shares them all
    first, second = engine.sequence(base, params), engine.sequence(base + tail, params)
    engine.scheduler.add(first)
    for _ in range(3):
        engine.step()
    assert first.computed == 48 and first.blocks[:4] == [0] * 4
    engine.scheduler.add(second)
    engine.step()
    assert second.cached_tokens == 48 and engine.pool.hit_tokens == 48
    while engine._has_work():
        engine.step()
    assert [first.output, second.output] == [generate(model, base, 30, frozenset()),
                                             generate(model, base + tail, 30, frozenset())]
    engine.pool.hit_tokens = 0
    assert engine.generate_sync([base + tail[:4]], params) == [
        generate(model, base + tail[:4], 30, frozenset())]
    assert engine.pool.hit_tokens >= 48  # its blocks 0..5, given back by both, still cached
    # a long request that fills the pool evicts them: a miss, the prompt computed again
    assert engine.generate_sync([other + other + other], params) == [
        generate(model, other + other + other, 30, frozenset())]
    engine.pool.hit_tokens = 0
    assert engine.generate_sync([base], params) == [generate(model, base, 30, frozenset())]
    assert engine.pool.hit_tokens == 0
    assert engine.pool.used == 0


def test_a_windowed_prefix_hit_needs_only_the_blocks_its_window_sees() -> None:
    """vLLM's windowed lookup (SlidingWindowManager.find_longest_cache_hit): the longest prefix
    whose blocks its next token sees (keys from n x block_size - window + 1, at least its
    last block) are all cached, 0s before them; against that definition over random holes."""
    pool = BlockPool(64, 2, prefix_caching=True)  # blocks of 2
    hit = pool.window_hit
    assert hit([1, 2, 3, 4, 5], 4) == [1, 2, 3, 4, 5]
    assert hit([1, 0, 3, 4, 5], 4) == [0, 0, 3, 4, 5]  # the 11th token sees 8, 9 (7 too)
    assert hit([1, 2, 3, 0, 5], 4) == [1, 2, 3]         # 5 alone: its token sees block 3
    assert hit([0, 2, 0, 4, 0], 4) == []
    assert hit([0, 0, 0, 4, 5], 4) == [0, 0, 0, 4, 5]
    assert hit([0, 0, 3], 1) == [0, 0, 3]               # a window of 1: the last block only
    assert hit([0, 0, 3], 5) == []                      # the 7th token sees keys 2..6
    gen = torch.Generator().manual_seed(3)
    for _ in range(300):
        n, bs, window = (int(torch.randint(1, hi, (1,), generator=gen)) for hi in (12, 5, 20))
        pool = BlockPool(64, bs, prefix_caching=True)
        cached = [int(b) * (i + 1) for i, b in enumerate(torch.randint(0, 2, (n,), generator=gen))]
        length = first = 0  # the longest hit, and the block of its next token's first key
        for m in range(n, 0, -1):
            f = min(max(0, m * bs - window + 1) // bs, m - 1)
            if all(cached[f:m]):
                length, first = m, f
                break
        got = pool.window_hit(cached, window)
        zeros = got.count(0)  # leading: blocks not looked at, or missing, before its window
        assert len(got) == length and zeros <= first, (cached, bs, window, got)
        assert got == [0] * zeros + cached[zeros:length], (cached, bs, window, got)


def test_a_continued_prompt_hits_its_window_once_its_first_blocks_are_evicted(
        mistral: tuple[LanguageModel, Any]) -> None:
    """A 70-token prompt (window 12, blocks of 8) read and answered; the first three of its
    blocks given back, then evicted (its later blocks still cached): a request with its 70
    tokens and more missed (the chain broken at block 0) and read all of them again; now it
    takes blocks 6 and 7 from the cache, the only ones its 65th token sees, and reads from
    token 64. Its answer is generate()'s, the freed blocks poisoned."""
    torch.set_num_threads(1)
    lm, model = mistral
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    engine = small_engine(lm, 40, 8, batched=16)
    (base,) = prompts([70], seed=13)
    (tail,) = prompts([21], seed=14)
    assert engine.generate_sync([base], params) == [generate(model, base, 30)]
    taken = engine.pool.allocate(len(engine.pool._free) + 3)  # evicts the first released
    engine.pool.release(taken)
    assert engine.pool.lookup(base + tail) == []  # block 0 gone: no chain from the start
    watch(engine, poison=True)
    engine.pool.hit_tokens = 0
    assert engine.generate_sync([base + tail], params) == [generate(model, base + tail, 30)]
    assert engine.pool.hit_tokens == 64
    assert engine.pool.used == 0


def test_a_model_with_full_attention_layers_keeps_every_block(tmp_path: Path) -> None:
    """Qwen2 with its first two layers full-causal: those read every key, so a sequence keeps
    all of its blocks."""
    lm = load_hf(windowed(tmp_path, "qwen2", **MIXED), device="cpu")
    engine = small_engine(lm, 40, 8, batched=2048, max_model_len=320)
    assert engine.scheduler.window is None
    used = watch(engine)
    params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
    engine.generate_sync(prompts([20], seed=10), params)
    assert max(used) == 10  # 80 tokens: every block held


@pytest.fixture(scope="module")
def qwen_mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[LanguageModel, Any]:
    """A tiny Qwen2 whose first two of four layers are full-causal, the others windowed."""
    model_dir = windowed(tmp_path_factory.mktemp("mixed"), "qwen2", **MIXED)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    model.generation_config.eos_token_id = None
    return load_hf(model_dir, device="cpu"), model


def watch_groups(engine: Engine) -> list[tuple[int, int, float]]:
    """(full group's blocks held by the running sequences, windowed group's, the published KV
    usage) after each step."""
    seen: list[tuple[int, int, float]] = []
    step = engine.step

    def watched() -> Any:
        out = step()
        assert engine.window_pool is not None
        running = engine.scheduler.running
        seen.append((len({b for s in running for b in s.blocks} - {0}),
                     len({b for s in running for b in s.window_blocks or []} - {0}),
                     engine.kv_usage))
        return out
    engine.step = watched  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("shared", [False, True], ids=["split", "shared-pages"])
def test_with_kv_groups_a_mixed_sequence_gives_back_its_windowed_blocks(
        shared: bool, qwen_mixed: tuple[LanguageModel, Any]) -> None:
    """Two KV groups: a 400-token sequence (300 prompt tokens read 16 a step) holds its full
    group's 25 blocks of 16, and in the windowed group its window's (12 tokens) and the
    next's, 3 at most; the KV usage published is the fuller group's (split), or the share of
    the pages' units held (one pool of pages: 2 full layers and 2 windowed, 4 units a block
    of every layer)."""
    torch.set_num_threads(1)
    lm, model = qwen_mixed
    engine = small_engine(lm, 60, 16, batched=16, max_model_len=400, kv_groups=True,
                          kv_shared=shared)
    seen = watch_groups(engine)
    prompt = prompts([300], seed=31)[0]
    params = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)
    assert engine.generate_sync([prompt], params) == [generate(model, prompt, 100)]
    assert max(full for full, _, _ in seen[:-1]) == 25
    assert max(win for _, win, _ in seen) <= 3
    assert engine.window_pool is not None
    pages = getattr(engine.window_pool, "pages", None)
    assert (pages is not None) == shared
    for full, win, usage in seen:
        if pages is None:
            assert usage == max(full / engine.pool.usable, win / engine.window_pool.usable)
        else:
            assert usage == (full * 2 + win * 2) / pages.usable


@pytest.mark.parametrize("kv_groups", [False, True], ids=["one-pool", "kv-groups"])
def test_kv_groups_admit_more_long_mixed_sequences(
        kv_groups: bool, qwen_mixed: tuple[LanguageModel, Any]) -> None:
    """The bytes of 100 blocks of 8 for every layer: one pool holds two of four 300-token
    sequences (38 blocks each) at a time; split into two groups (kv_groups.py), all four run
    together. Answers are generate()'s either way."""
    torch.set_num_threads(1)
    lm, model = qwen_mixed
    engine = small_engine(lm, 100, 8, batched=64, max_model_len=320, kv_groups=kv_groups)
    batch = prompts([280, 281, 282, 283], seed=32)
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    outs = engine.generate_sync(batch, params)
    for prompt, out in zip(batch, outs, strict=True):
        assert out == generate(model, prompt, 20), len(prompt)
    assert engine.peak_running == (4 if kv_groups else 2)
    assert engine.pool.used == 0
    assert engine.window_pool is None or engine.window_pool.used == 0


def test_kv_groups_preempt_when_the_windowed_group_runs_short(
        qwen_mixed: tuple[LanguageModel, Any]) -> None:
    """Two groups whose windowed one holds 6 blocks of 8: sequences of prompts of 5 to 7
    tokens are admitted with one windowed block each, three of them, and each needs 3 as
    it decodes 60 tokens: the windowed group runs short, the newest are preempted and read
    again, never past the budget, and every answer is generate()'s; a prefix hit then takes
    the full group's blocks from block 0 and the windowed group's its window sees."""
    torch.set_num_threads(1)
    lm, model = qwen_mixed
    # (the fixed split's windowed group; one pool of pages runs short as a whole:
    # test_llm_mixed_window.test_requests_gone_midway_leave_no_block_in_either_group)
    engine = small_engine(lm, 40, 8, batched=256, max_model_len=320, kv_groups=True,
                          kv_shared=False)
    assert engine.window_pool is not None and engine.window_pool.usable == 6
    seen = watch_groups(engine)
    batch = prompts([5, 6, 7, 5, 6, 7], seed=33)
    params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
    outs = engine.generate_sync(batch, params)
    for prompt, out in zip(batch, outs, strict=True):
        assert out == generate(model, prompt, 60), len(prompt)
    assert engine.scheduler.preemptions > 0
    assert max(win for _, win, _ in seen) <= engine.window_pool.usable
    base, tail = prompts([100, 9], seed=34)
    one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    assert engine.generate_sync([base], one) == [generate(model, base, 1)]
    engine.pool.hit_tokens = 0
    hit = base[:96] + tail
    assert engine.generate_sync([hit], params) == [generate(model, hit, 60)]
    assert engine.pool.hit_tokens == 96
    # decoding 60 tokens more, the base's windowed blocks at 96 are evicted: no hit, though
    # the full group still holds its blocks
    assert engine.generate_sync([base], params) == [generate(model, base, 60)]
    engine.pool.hit_tokens = 0
    assert engine.generate_sync([hit], one) == [generate(model, hit, 1)]
    assert engine.pool.hit_tokens == 0
