"""The LLM benchmark's prompts and rounds (bench/llm): enough distinct prompts of one token length
for long points, none sharing a first KV block, and ``--rounds`` per model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "llm"))

import limit
import run


def test_prompts_are_many_distinct_and_one_length(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from kubemaas_testbed.llm_models import build_tokenizer, corpus_text

    build_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    # more than the ~700 the corpus's runs of words could give
    prompts = limit.make_prompts(tok, corpus_text(), 1500, 40)
    assert len(set(prompts)) == 1500
    ids = limit.encode(tok, prompts)
    assert {len(row) for row in ids} == {40}
    overhead = len(limit.encode(tok, [""])[0])
    # the part after the template's head differs within the first 16 tokens (a KV block)
    heads = {tuple(row[:16]) for row in ids}
    assert overhead < 16 and len(heads) == 1500
    assert limit.make_prompts(tok, corpus_text(), 20, 40) == prompts[:20]  # seeded


def test_rounds_per_model() -> None:
    assert run.parse_rounds("4") == {"*": 4}
    rounds = run.parse_rounds("tiny=48,small=4")
    assert run.rounds_for(rounds, "tiny") == 48 and run.rounds_for(rounds, "small") == 4
    assert run.rounds_for(run.parse_rounds("tiny=8"), "small") == 2
    for bad in ("0", "x", "huge=3", "tiny=-1", "tiny="):
        with pytest.raises(argparse.ArgumentTypeError):
            run.parse_rounds(bad)
