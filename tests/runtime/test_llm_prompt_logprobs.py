"""Prompt logprobs in the engine: each prompt token's logprob given the tokens before it, as
the model's own forward over the whole prompt gives it, whatever the engine does around it
(chunked prefill, a decode beside it, the prompt already in the prefix cache, a preemption)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import LanguageModel, load_hf
from kubemaas_runtime.llm.request_stream import Delta
from kubemaas_runtime.llm.sampling import SamplingParams, TokenLogprobs
from kubemaas_runtime.llm.scheduler import Sequence

from . import llm_reference as ref

GREEDY = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
PROMPT = [(7 * i + 3) % 200 + 5 for i in range(50)]  # 50 tokens: 4 chunks of 16


def assert_scores(got: list[TokenLogprobs], ref: torch.Tensor, prompt: list[int], k: int
                  ) -> None:
    assert [lp.token for lp in got] == prompt[1:]
    want = ref.gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
    assert torch.allclose(torch.tensor([lp.logprob for lp in got]), want, atol=1e-4)
    for p, lp in enumerate(got):
        # the rank among the forward's logprobs, up to tokens within float noise of it
        assert int((ref[p] > want[p] + 1e-4).sum()) + 1 <= (lp.rank or 0) <= \
            int((ref[p] > want[p] - 1e-4).sum()) + 1
        top_ids = [t for t, _ in lp.top]
        top_values = [v for _, v in lp.top]
        assert len(top_ids) == k
        assert torch.allclose(torch.tensor(top_values), ref[p][top_ids], atol=1e-4)
        assert torch.allclose(torch.tensor(top_values), torch.topk(ref[p], k).values, atol=1e-4)


def run(engine: Engine, seqs: list[Sequence]) -> dict[int, list[Delta | BaseException]]:
    for seq in seqs:
        engine.scheduler.add(seq)
    items: dict[int, list[Delta | BaseException]] = {}
    while engine.scheduler.waiting or engine.scheduler.running:
        for seq, item in engine.step():
            items.setdefault(seq.rid, []).append(item)
    return items


def small_engine(lm: LanguageModel) -> Engine:
    return Engine(lm, EngineConfig(kv_cache_bytes=4 << 20, max_model_len=256,
                                   max_num_batched_tokens=16))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prompt_logprobs_equal_the_models_forward(family: str, tiny_llama: Path,
                                                  tiny_gpt2: Path) -> None:
    """Read in four chunks beside another request's decodes, after the same prompt was cached
    by an unscored request: the logprobs, ranks and top-3 of every prompt token are the
    forward's; the generated tokens are those of the unscored request."""
    torch.set_num_threads(1)
    model_dir = tiny_llama if family == "llama" else tiny_gpt2
    engine = small_engine(load_hf(model_dir, device="cpu"))
    plain = engine.sequence(PROMPT, GREEDY)
    run(engine, [plain])  # its blocks stay in the prefix cache
    beside = engine.sequence([9, 10, 11], replace(GREEDY, max_tokens=20))
    scored = engine.sequence(PROMPT, replace(GREEDY, prompt_logprobs=3))
    items = run(engine, [beside, scored])
    assert scored.cached_tokens == 0  # a scored prompt is computed, not read from the cache
    first = items[scored.rid][0]
    assert isinstance(first, Delta) and first.prompt_logprobs is not None
    assert all(isinstance(d, Delta) and d.prompt_logprobs is None for d in items[scored.rid][1:])
    assert_scores(list(first.prompt_logprobs), ref.prompt_logprobs(model_dir, PROMPT), PROMPT, 3)
    assert scored.output == plain.output
    assert engine.pool.used == 0


def test_a_preempted_prompt_is_scored_once(tiny_llama: Path) -> None:
    """Preempted after two of its chunks, the scored prompt is read again from the start; the
    positions already scored are not scored twice."""
    torch.set_num_threads(1)
    engine = small_engine(load_hf(tiny_llama, device="cpu"))
    other = engine.sequence([9, 10, 11], replace(GREEDY, max_tokens=30))
    scored = engine.sequence(PROMPT, replace(GREEDY, prompt_logprobs=0))
    engine.scheduler.add(other)
    engine.step()
    engine.scheduler.add(scored)
    engine.step()
    engine.step()
    assert scored.prompt_logprobs is not None and 0 < len(scored.prompt_logprobs) < 49
    assert engine.scheduler._preempt(other)  # the newest other than `other`: the scored one
    assert scored.computed == 0
    items = run(engine, [])
    first = items[scored.rid][0]
    assert isinstance(first, Delta) and first.prompt_logprobs is not None
    assert_scores(list(first.prompt_logprobs), ref.prompt_logprobs(tiny_llama, PROMPT), PROMPT, 0)


def test_max_tokens_zero_returns_the_prompt_scores_alone(tiny_llama: Path) -> None:
    """``max_tokens`` 0 (echo without generation): one finishing delta, no token, the prompt's
    logprobs; the blocks are freed."""
    torch.set_num_threads(1)
    engine = small_engine(load_hf(tiny_llama, device="cpu"))
    seq = engine.sequence(PROMPT, replace(GREEDY, max_tokens=0, prompt_logprobs=1))
    items = run(engine, [seq])
    (delta,) = items[seq.rid]
    assert isinstance(delta, Delta)
    assert (delta.finish_reason, delta.token_ids, delta.completion_tokens, delta.text) == \
        ("length", (), 0, "")
    assert delta.prompt_logprobs is not None
    assert_scores(list(delta.prompt_logprobs), ref.prompt_logprobs(tiny_llama, PROMPT), PROMPT, 1)
    assert seq.output == [] and engine.pool.used == 0
