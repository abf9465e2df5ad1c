"""Structured outputs' pure parts: which request field gives the constraint, and how a packed
bitmask becomes the tokens allowed next (and when a mask too slow fails its row alone)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import torch

from kubemaas_runtime.llm import structured
from kubemaas_runtime.llm.sampling import SampleState, SamplingParams, sample
from kubemaas_runtime.llm.structured import Constraint, allowed_tokens
from kubemaas_runtime.protocol.openai_errors import ApiError
from kubemaas_runtime.protocol.openai_schema import parse_request


def constraint(**doc: Any) -> Constraint | None:
    return parse_request({"prompt": "hi", **doc}, False, vocab=100).constraint


def test_every_field_that_gives_a_structure() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert constraint() is None
    assert constraint(response_format={"type": "text"}) is None
    assert constraint(response_format={"type": "json_object"}) == \
        Constraint("json", '{"type": "object"}', "response_format")
    assert constraint(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": schema}}) == Constraint("json", json.dumps(schema),
                                                       "response_format")
    assert constraint(structured_outputs={"json": json.dumps(schema)}) == \
        Constraint("json", json.dumps(schema), "structured_outputs")
    assert constraint(structured_outputs={"regex": "a+", "choice": None}) == \
        Constraint("regex", "a+", "structured_outputs")
    assert constraint(guided_choice=["x", "y"]) == Constraint("choice", '["x", "y"]',
                                                              "guided_choice")
    assert constraint(guided_grammar="root ::= \"a\"") == \
        Constraint("grammar", "root ::= \"a\"", "guided_grammar")
    for bad in ({"structured_outputs": []}, {"structured_outputs": {}},
                {"guided_json": [1]}, {"guided_regex": ""}, {"guided_choice": ["a", 3]},
                {"response_format": "json"}):
        with pytest.raises(ApiError) as err:
            constraint(**bad)
        assert err.value.status == 400


class _Matcher:
    """A matcher's mask API: the packed bitmask it returns, after ``delay`` seconds."""

    def __init__(self, allowed: list[int], vocab: int, delay: float = 0.0) -> None:
        words = torch.zeros((vocab + 31) // 32, dtype=torch.int32)
        for token in allowed:
            words[token // 32] |= 1 << (token % 32)
        self.raw = words.numpy().tobytes()
        self.delay = delay
        self.consumed: list[int] = []

    def compute_bitmask(self) -> bytes:
        time.sleep(self.delay)
        return self.raw

    def consume_token(self, token: int) -> bool:
        self.consumed.append(token)
        return True


def test_the_bitmask_is_unpacked_token_by_token() -> None:
    allowed = [0, 7, 8, 31, 32, 63, 99]
    mask = allowed_tokens(_Matcher(allowed, 100), 100)
    assert mask is not None and mask.nonzero().flatten().tolist() == allowed


def test_a_masked_row_draws_an_allowed_token_and_a_slow_mask_fails_its_row_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(structured, "FAIL_MASK_S", 0.05)
    logits = torch.randn(3, 100)
    logits[0, 5] = 50.0  # the favourite, not allowed
    params = SamplingParams(temperature=0.0)
    fast, slow = _Matcher([11, 12], 100), _Matcher([1], 100, delay=0.1)
    states = [SampleState(params, matcher=fast), SampleState(params, matcher=slow),
              SampleState(params)]
    out = sample(logits.clone(), states)
    assert out.tokens[0] == [11, 12][int(logits[0, 11] < logits[0, 12])]
    assert fast.consumed == [out.tokens[0]]
    assert set(out.failed) == {1} and "ms for one token" in str(out.failed[1])
    assert out.tokens[2] == int(logits[2].argmax())


def test_bad_words_bar_the_token_that_would_complete_them() -> None:
    from kubemaas_runtime.llm.sampling import barred_tokens

    words = ((7,), (1, 2, 3), (2, 4))
    assert barred_tokens(words, []) == [7]
    assert barred_tokens(words, [1, 2]) == [3, 4, 7]
    assert barred_tokens(words, [5, 2]) == [4, 7]
    assert barred_tokens(words, [2, 1]) == [7]
