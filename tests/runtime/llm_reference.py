"""The model's own answers, computed in the test process with transformers' ``generate()``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch


@functools.lru_cache(maxsize=4)
def load(model_dir: Path) -> tuple[Any, Any]:
    import transformers

    torch.set_num_threads(1)  # the machine is shared: one thread is much faster than contention
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    return tok, model


def greedy_ids(model_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """``generate()``'s new tokens, greedy, stopping at EOS (the EOS token included)."""
    _, model = load(model_dir)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens,
                             do_sample=False)
    return [int(t) for t in out[0, len(prompt_ids):]]


def prompt_ids(model_dir: Path, text: str) -> list[int]:
    tok, _ = load(model_dir)
    return [int(t) for t in tok(text)["input_ids"]]


def eos_id(model_dir: Path) -> int:
    tok, _ = load(model_dir)
    return int(tok.eos_token_id)
