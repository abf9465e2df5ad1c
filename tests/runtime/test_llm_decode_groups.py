"""Decode rows attended in groups of similar context width (packing.decode_groups), in-process:
an engine that splits its decode rows answers as one that pads them all to the widest, with
the traced decode graph on (split steps then run eagerly) and off."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from kubemaas_runtime.llm import packing
from kubemaas_runtime.llm.attention import PagedStep
from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import LanguageModel, load_hf
from kubemaas_runtime.llm.sampling import SamplingParams

CONFIG = EngineConfig(kv_cache_bytes=8 << 20, max_model_len=256, max_num_seqs=8,
                      max_num_batched_tokens=32, block_size=8)


def run_mixed(engine: Engine, lm: LanguageModel) -> list[list[int]]:
    """Short prompts decoding beside a long one (20 blocks of context against 2-5), greedy,
    run to the end in the calling thread; their outputs."""
    prompts = ["the cache " * 70, *(f"request {i}: the" for i in range(5)), "the cache " * 9]
    seqs = []
    for i, text in enumerate(prompts):
        seq = engine.sequence(list(lm.tokenizer(text)["input_ids"]),
                              SamplingParams(max_tokens=12 + 3 * i, temperature=0.0,
                                             ignore_eos=True))
        seqs.append(seq)
        engine.scheduler.add(seq)
        engine.step()
    while engine._has_work():
        engine.step()
    return [seq.output for seq in seqs]


@pytest.mark.parametrize("traced", [True, False], ids=["traced", "eager"])
def test_split_decode_rows_answer_as_padded_ones(tiny_llama: Path, traced: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    cfg = dataclasses.replace(CONFIG, traced_decode=traced)
    monkeypatch.setattr(packing, "GROUP_SAVES_BLOCKS", 10**9)  # never split
    want = run_mixed(Engine(lm, cfg), lm)

    monkeypatch.setattr(packing, "GROUP_SAVES_BLOCKS", 8)  # this batch's contexts are small
    assert lm.stack is not None
    stack, split = lm.stack, []

    def recording(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                  step: PagedStep) -> torch.Tensor:
        if step.decode_groups:
            split.append(step.decode_groups)
        return stack(input_ids, position_ids, keep, step)

    engine = Engine(dataclasses.replace(lm, stack=recording), cfg)
    assert run_mixed(engine, lm) == want
    assert len(split) >= 3, split
    assert all(sum(rows for rows, _ in groups) >= 2 for groups in split)
    if traced:
        assert engine.traced is not None and not engine.traced.failed
        assert engine.traced.replays > 10  # the steps of one group still replay the graph
