"""Every sampling request the OpenAI validation accepts samples without an error (an error fails
that request; before rows were isolated it failed every request of the engine's step). Extreme
but valid values (a temperature of 1e-300, the widest penalties and biases, logits of large
magnitude)."""

from __future__ import annotations

import math
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kubemaas_runtime.llm.sampling import SampleState, sample
from kubemaas_runtime.protocol.openai_errors import ApiError
from kubemaas_runtime.protocol.openai_schema import parse_request

VOCAB = 50


def edges(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Floats of the range, its ends and the tiny positive values that overflow a division."""
    return st.floats(lo, hi) | st.sampled_from([lo, hi, 1e-300, 1e-40, 1e-6, 1e-5])


fields: dict[str, st.SearchStrategy[Any]] = {
    "temperature": edges(0.0, 2.0), "top_p": edges(1e-9, 1.0),
    "top_k": st.integers(-1, VOCAB + 5), "seed": st.integers(0, 2**63 - 1),
    "presence_penalty": edges(-2.0, 2.0), "frequency_penalty": edges(-2.0, 2.0),
    "repetition_penalty": edges(0.01, 10.0),
    "logit_bias": st.dictionaries(st.integers(0, VOCAB - 1).map(str), edges(-100.0, 100.0),
                                  max_size=4),
    "logprobs": st.integers(0, 20), "min_p": edges(0.0, 1.0),
    "min_tokens": st.integers(0, 8), "max_tokens": st.integers(1, 8),
    "stop_token_ids": st.lists(st.integers(0, VOCAB - 1), max_size=VOCAB),
}
docs = st.fixed_dictionaries({"prompt": st.just([1, 2, 3])}, optional=fields)
logits_scale = st.sampled_from([1.0, 30.0, 1e4])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(docs, min_size=1, max_size=4), logits_scale, st.integers(0, 2**31))
def test_every_accepted_request_samples(batch: list[dict[str, Any]], scale: float,
                                        seed: int) -> None:
    states = []
    for doc in batch:
        try:
            params = parse_request(doc, chat=False, vocab=VOCAB).params
        except ApiError:
            continue  # refused with a 400: never reaches the sampler
        states.append(SampleState(params, prompt=frozenset(range(VOCAB // 2)),
                                  held_back=frozenset(params.stop_token_ids) | {0}))
    if not states:
        return
    gen = torch.Generator().manual_seed(seed)
    for _ in range(4):  # a few steps, so that penalties see generated tokens
        logits = torch.randn(len(states), VOCAB, generator=gen) * scale
        tokens, infos, failed = sample(logits, states)
        assert not failed, failed
        assert all(0 <= t < VOCAB for t in tokens)
        for state, info in zip(states, infos, strict=True):
            assert (info is not None) == (state.params.logprobs is not None)
            if info is not None:
                assert math.isfinite(info.logprob) and info.logprob <= 0.0, info
