"""Structured outputs' pure parts: which request field gives the constraint, and how a packed
bitmask becomes the tokens allowed next (and when a mask too slow fails its row alone)."""

from __future__ import annotations

import json
import time
from pathlib import Path
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


def test_structural_tags_from_both_fields() -> None:
    """vLLM's structural tag, as ``structured_outputs.structural_tag`` (a JSON string, or an
    object) or as ``response_format`` of type ``structural_tag``: the same constraint."""
    tag = {"structures": [{"begin": "<call=f>", "schema": {"type": "object"}, "end": "</call>"}],
           "triggers": ["<call="]}
    want = Constraint("structural_tag", json.dumps(tag), "structured_outputs")
    assert constraint(structured_outputs={"structural_tag": json.dumps(tag)}) == want
    assert constraint(structured_outputs={"structural_tag": {"type": "structural_tag", **tag}}) \
        == want
    assert constraint(response_format={"type": "structural_tag", **tag}) == \
        Constraint("structural_tag", json.dumps(tag), "response_format")
    structure = tag["structures"][0]
    for bad, words in [
            ({**tag, "triggers": []}, "non-empty triggers"),
            ({**tag, "triggers": [""]}, "non-empty triggers"),
            ({**tag, "structures": []}, "1 to 128 structures"),
            ({**tag, "structures": [structure] * 129}, "1 to 128 structures"),
            ({**tag, "structures": [{**structure, "schema": "{}"}]}, "structures[0] is not"),
            ({**tag, "structures": [{"begin": "<call=f>", "schema": {}}]},
             "structures[0] is not"),
            ({**tag, "triggers": ["<tool"]}, "starts with none of the triggers"),
            ({**tag, "type": "json"}, "a structural tag is"),
            ({"type": "structural_tag", "format": {"type": "triggered_tags"}},
             "'format' form is not served"),
            ("{nope", "not valid JSON")]:
        with pytest.raises(ApiError) as err:
            constraint(structured_outputs={"structural_tag": bad})
        assert err.value.status == 400 and words in err.value.message, (bad, err.value.message)


def test_a_structural_tag_triggered_by_a_special_token(tmp_path: Path) -> None:
    """A trigger that is one of the model's special tokens is matched as that token (the model
    emits it as one id, not as text)."""
    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    from kubemaas_testbed.llm_models import build_tokenizer

    build_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    lltok = llguidance.hf.from_tokenizer(tok)
    tag = {"structures": [{"begin": "<|tool|>{\"name\": ", "schema": {"enum": ["f", "g"]},
                           "end": "}"}], "triggers": ["<|tool|>"]}
    grammar = structured.grammar_text(Constraint("structural_tag", json.dumps(tag), "x"),
                                      structured.special_tokens(tok))

    def accepts(ids: list[int]) -> bool:
        matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        return bool(matcher.consume_tokens(ids)) and not matcher.is_error()

    text = tok.encode("a few words ", add_special_tokens=False)
    tool = tok.convert_tokens_to_ids("<|tool|>")
    call = tok.encode('{"name": "g"} and more', add_special_tokens=False)
    assert accepts([*text, tool, *call])
    assert not accepts([*text, tool, *tok.encode('{"name": "h"}', add_special_tokens=False)])
    assert not accepts([*text, tool, *tok.encode("free text", add_special_tokens=False)])
    mixed = {**tag, "structures": [*tag["structures"], {"begin": "<x>", "schema": {},
                                                        "end": ""}],
             "triggers": ["<|tool|>", "<x>"]}
    with pytest.raises(ValueError, match="special tokens of this model"):
        structured.grammar_text(Constraint("structural_tag", json.dumps(mixed), "x"),
                                structured.special_tokens(tok))


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

    def is_error(self) -> bool:
        return False


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
