"""A mixed-window model's two KV groups over one pool of pages (kv_shared.py) on a real tiny
model: how many sequences run at once against one pool and the fixed split, answers equal to
transformers' generate()."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kubemaas_runtime.llm.loader import LanguageModel
from kubemaas_runtime.llm.sampling import SamplingParams
from tests.runtime.test_llm_sliding_window import prompts
from tests.runtime.test_llm_window_kv import generate, qwen_mixed, small_engine

__all__ = ["qwen_mixed"]  # (the fixture, shared with test_llm_window_kv)

LAYOUTS = {"one-pool": (False, False), "split": (True, False), "shared-pages": (True, True)}


def _peak(layout: str, lm: LanguageModel, model: Any, blocks: int, max_model_len: int,
          lengths: list[int], max_tokens: int) -> int:
    """The most sequences that ran at once serving ``lengths``' prompts (answers checked)."""
    grouped, shared = LAYOUTS[layout]
    engine = small_engine(lm, blocks, 8, batched=64, max_model_len=max_model_len,
                          kv_groups=grouped, kv_shared=shared)
    batch = prompts(lengths, seed=35)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for prompt, out in zip(batch, engine.generate_sync(batch, params), strict=True):
        assert out == generate(model, prompt, max_tokens), len(prompt)
    assert engine.pool.used == 0
    return engine.peak_running


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_short_mixed_sequences_fit_in_shared_pages_as_in_one_pool(
        layout: str, qwen_mixed: tuple[LanguageModel, Any]) -> None:
    """The bytes of 14 blocks of 8 for every layer, max-model-len 96, eight sequences of 11
    tokens (shorter than the 12-token window: as many blocks in each group): as many run at
    once over shared pages as in one pool (8 and 7: each group keeps a spare block per
    running sequence, and one pool's spare is every layer's), more than under the fixed split
    (3), whose windowed group is sized for sequences of 96."""
    torch.set_num_threads(1)
    lm, model = qwen_mixed
    peak = _peak(layout, lm, model, 14, 96, [6, 6, 7, 7, 6, 6, 7, 7], 5)
    assert peak == {"one-pool": 7, "split": 3, "shared-pages": 8}[layout]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_long_mixed_sequences_fit_in_shared_pages_as_in_the_split(
        layout: str, qwen_mixed: tuple[LanguageModel, Any]) -> None:
    """The bytes of 100 blocks of 8 for every layer, max-model-len 320, six sequences of
    about 300 tokens: more run at once over shared pages (5) than in one pool (2: 38 blocks
    each) or under the fixed split (4)."""
    torch.set_num_threads(1)
    lm, model = qwen_mixed
    peak = _peak(layout, lm, model, 100, 320, [280, 281, 282, 283, 284, 285], 20)
    assert peak == {"one-pool": 2, "split": 4, "shared-pages": 5}[layout]
