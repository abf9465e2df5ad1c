"""The engine with its decode rows' lanes (llm/decode_lanes.py) against the engine without, in
process, over a changing batch: the same greedy answers, eagerly and from the traced graph, with
steps that read the lanes; a budget too small for them leaves every step to the pool; the
lanes' bytes are published (``kubemaas_llm_decode_lanes_bytes``) and given back when idle."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from kubemaas_runtime.llm import decode_lanes
from kubemaas_runtime.llm.attention import PagedStep
from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import load_hf
from kubemaas_runtime.metrics import LLMMetrics

from .llm_staggered import run_staggered


@pytest.fixture(autouse=True)
def short_contexts_in_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's rows read little: lanes take them."""
    monkeypatch.setattr(decode_lanes, "LANES_FROM_BYTES", 1)


CONFIG = EngineConfig(kv_cache_bytes=8 << 20, max_model_len=256, max_num_seqs=8,
                      max_num_batched_tokens=32, block_size=8)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_the_engine_answers_alike_with_and_without_lanes(tiny_llama: Path, traced: bool) -> None:
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    config = dataclasses.replace(CONFIG, traced_decode=traced)
    without = Engine(lm, dataclasses.replace(config, decode_lanes=False))
    assert without.lanes is None
    want = run_staggered(without, lm)
    read_lanes = []
    forward = lm.stack if traced else lm.forward

    def counting(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                 step: PagedStep) -> torch.Tensor:
        read_lanes.append(step.lanes is not None)
        assert forward is not None
        return forward(input_ids, position_ids, keep, step)

    engine = Engine(lm, config)
    assert engine.lanes is not None
    if traced:
        assert engine.traced is not None
        engine.traced._stack = counting  # the graph is traced from (and falls back to) this
    else:
        engine._model_step = counting
    assert run_staggered(engine, lm) == want
    if traced:
        assert engine.traced is not None and not engine.traced.failed
        assert engine.traced.replays > 20
        # the graphs' steps read the lanes, those with prompt chunks too
        assert set(engine.traced._graphs) == {(True, False), (True, True)}
        assert engine.traced.replays_with_prompts > 0
    else:
        assert sum(read_lanes) > 20
    assert engine.lanes.filled >= 7  # every sequence's lane was filled once, at least


def test_lanes_over_their_budget_leave_the_steps_to_the_pool(tiny_llama: Path) -> None:
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    want = run_staggered(Engine(lm, dataclasses.replace(CONFIG, decode_lanes=False)), lm)
    engine = Engine(lm, CONFIG)
    assert engine.lanes is not None
    engine.lanes.max_bytes = 1  # no lane fits
    assert run_staggered(engine, lm) == want
    assert engine.lanes.filled == 0 and engine.lanes.nbytes == 0


def test_the_lanes_bytes_are_published_and_given_back_when_idle(tiny_llama: Path) -> None:
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    engine = Engine(lm, CONFIG)
    published = []
    step = engine.step

    def stepped() -> list:
        out = step()
        published.append(engine.lanes_bytes)
        return out

    engine.step = stepped  # type: ignore[method-assign]
    run_staggered(engine, lm)
    assert max(published) > 0
    assert published[-1] == 0 and engine.lanes is not None and engine.lanes.nbytes == 0
    metrics = LLMMetrics("tiny", 8, engine.pool.usable)
    metrics.set_engine(0, 0, 0.0, 0, lanes_bytes=max(published))
    assert f'kubemaas_llm_decode_lanes_bytes{{model_name="tiny"}} {max(published)}' in \
        "\n".join(metrics.render_lines())
