"""Engine steps replayed from traced graphs (llm/traced_step.py), in-process: for each family
whose stack is traced, with torch's linear layers and with oneDNN-packed ones, every step of a
changing batch (sequences arriving and finishing, prompt chunks with and without a cached
prefix, contexts crossing blocks) gives the eager stack's logits bit for bit; a stack that
cannot be traced leaves the engine eager, with the same answers."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from kubemaas_runtime.llm import packed_linear
from kubemaas_runtime.llm.attention import PagedStep
from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import LanguageModel, load_hf
from kubemaas_runtime.llm.sampling import SamplingParams
from kubemaas_runtime.llm.traced_step import MAX_CHUNKS, TracedSteps, structure
from kubemaas_testbed.llm_models import build_llm

# a small token budget: prompts are read in chunks, some after a cached part of their prompt
CONFIG = EngineConfig(kv_cache_bytes=8 << 20, max_model_len=256, max_num_seqs=8,
                      max_num_batched_tokens=24, block_size=8, prefill_share=0)


def run_staggered(engine: Engine, lm: LanguageModel, count: int = 7) -> list[list[int]]:
    """Sequences of different prompt and answer lengths, a few added every few steps, run to
    the end: the decode batch grows and shrinks, prompts are read in chunks beside decodes,
    and the contexts cross block boundaries."""
    seqs = []
    for i in range(count):
        prompt = list(lm.tokenizer(f"request {i}: " + "the cache " * (1 + 3 * i))["input_ids"])
        seq = engine._sequence(prompt, SamplingParams(max_tokens=6 + 5 * i, temperature=0.0,
                                                      ignore_eos=True))
        seqs.append(seq)
        engine.scheduler.add(seq)
        if i % 2:
            for _ in range(4):
                engine.step()
    while engine._has_work():
        engine.step()
    return [seq.output for seq in seqs]


@pytest.mark.parametrize("packed", [False, True], ids=["torch-linear", "onednn"])
@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "llama"])
def test_replayed_steps_give_the_eager_logits(family: str, packed: bool, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setattr(packed_linear, "MIN_WEIGHTS", 0)  # the test models' layers are tiny
    lm = load_hf(build_llm(tmp_path / family, family=family), device="cpu",
                 packed_linear=packed)
    assert lm.stack is not None
    assert any(b.is_mkldnn for b in lm.model.buffers()) == packed
    traced = TracedSteps(lm.model, lm.stack)
    shapes: list[tuple[object, int]] = []

    def both(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
             step: PagedStep) -> torch.Tensor:
        assert lm.stack is not None
        logits = traced(input_ids, position_ids, keep, step)
        expected = lm.stack(input_ids, position_ids, keep, step)
        assert torch.equal(logits, expected)
        shapes.append((structure(step), input_ids.shape[1]))
        return expected

    engine = Engine(dataclasses.replace(lm, stack=both),
                    dataclasses.replace(CONFIG, traced_steps=False))
    run_staggered(engine, lm)
    assert not traced.failed
    structures = {s for s, _ in shapes}
    # every step but the first of each structure came from a graph
    assert traced.replays == len(shapes) - len(structures) > 0
    assert (True, ()) in structures  # decodes alone
    assert any(s[0] and s[1] for s in structures)  # decodes and prompt chunks together
    assert any(True in s[1] for s in structures)  # a chunk after a cached part of its prompt
    # one graph served steps of many sizes
    decode_only = [tokens for s, tokens in shapes if s == (True, ())]
    assert len(set(decode_only)) >= 4


def test_the_engine_replays_steps_and_answers_as_eager(tiny_llama: Path) -> None:
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    eager = Engine(lm, dataclasses.replace(CONFIG, traced_steps=False))
    assert eager.traced is None
    want = run_staggered(eager, lm)
    engine = Engine(lm, CONFIG)
    assert run_staggered(engine, lm) == want
    assert engine.traced is not None and not engine.traced.failed
    assert engine.traced.replays > 20


def test_a_burst_of_many_chunks_runs_eagerly(tiny_llama: Path) -> None:
    """A step that reads more than MAX_CHUNKS prompts is not traced (each structure costs a
    trace); the answers are the eager engine's."""
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    prompts = [list(lm.tokenizer(f"prompt number {i}")["input_ids"]) for i in range(8)]
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    config = dataclasses.replace(CONFIG, max_num_batched_tokens=256)
    want = Engine(lm, dataclasses.replace(config, traced_steps=False)).generate_sync(prompts,
                                                                                     params)
    engine = Engine(lm, config)
    seen: list[object] = []
    assert engine.traced is not None
    traced = engine.traced

    def watching(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                 step: PagedStep) -> torch.Tensor:
        seen.append(structure(step))
        return traced(input_ids, position_ids, keep, step)

    engine._model_step = watching
    assert engine.generate_sync(prompts, params) == want
    assert seen[0] is None and len(prompts) > MAX_CHUNKS  # the burst's step: eager
    assert traced.replays == len(seen) - 2  # then decodes only: traced once, then replayed


def test_a_stack_that_cannot_be_traced_stays_eager(tiny_llama: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A stack whose Python reads a tensor's value (the trace would freeze it) is not traced:
    the engine logs why and runs every step eagerly."""
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    direct = lm.stack
    assert direct is not None

    def branching(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                  step: PagedStep) -> torch.Tensor:
        if int(position_ids.max()) < 0:  # never, but a value the trace would freeze
            raise AssertionError("negative positions")
        return direct(input_ids, position_ids, keep, step)

    want = run_staggered(Engine(lm, dataclasses.replace(CONFIG, traced_steps=False)), lm)
    engine = Engine(dataclasses.replace(lm, stack=branching), CONFIG)
    with caplog.at_level(logging.WARNING, logger="kubemaas.runtime.llm"):
        assert run_staggered(engine, lm) == want
    assert engine.traced is not None and engine.traced.failed
    assert engine.traced.replays == 0
    assert "steps of this structure stay eager: the trace failed" in caplog.text
