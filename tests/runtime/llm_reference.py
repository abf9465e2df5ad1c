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


def greedy_ids(model_dir: Path, prompt_ids: list[int], max_new_tokens: int,
               min_new_tokens: int = 0, stop_ids: tuple[int, ...] = ()) -> list[int]:
    """``generate()``'s new tokens, greedy, stopping at EOS or one of ``stop_ids`` (that token
    included), which are held back for ``min_new_tokens`` tokens (transformers' own
    processor)."""
    tok, model = load(model_dir)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens,
                             do_sample=False, min_new_tokens=min_new_tokens,
                             eos_token_id=[tok.eos_token_id, *stop_ids])
    return [int(t) for t in out[0, len(prompt_ids):]]


def greedy_ids_with_repetition_penalty(model_dir: Path, prompt_ids: list[int],
                                       max_new_tokens: int, penalty: float) -> list[int]:
    """``generate(repetition_penalty=...)``'s new tokens (transformers' own processor: the
    prompt's and the output's tokens penalized), greedy, stopping at EOS."""
    _, model = load(model_dir)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens,
                             do_sample=False, repetition_penalty=penalty)
    return [int(t) for t in out[0, len(prompt_ids):]]


def greedy_ids_with_output_penalties(model_dir: Path, prompt_ids: list[int],
                                     max_new_tokens: int, frequency: float,
                                     presence: float) -> list[int]:
    """Greedy tokens with OpenAI's frequency and presence penalties (each generated token's
    logit lowered by frequency x its count + presence), written out over the model's full
    forward at every step: what the engine must match."""
    _, model = load(model_dir)
    ids, new = list(prompt_ids), []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            for token in set(new):
                logits[token] -= frequency * new.count(token) + presence
            token = int(logits.argmax())
            ids.append(token)
            new.append(token)
            if token == model.generation_config.eos_token_id:
                break
    return new


def prompt_ids(model_dir: Path, text: str) -> list[int]:
    tok, _ = load(model_dir)
    return [int(t) for t in tok(text)["input_ids"]]


def eos_id(model_dir: Path) -> int:
    tok, _ = load(model_dir)
    return int(tok.eos_token_id)


def prompt_logprobs(model_dir: Path, ids: list[int]) -> torch.Tensor:
    """log-softmax of the model's logits over the whole prompt in one forward: [len - 1, V],
    row p the distribution of token p + 1."""
    _, model = load(model_dir)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def beam_search(model_dir: Path, prompt_ids: list[int], width: int, max_new_tokens: int,
                length_penalty: float = 1.0, model: Any = None) -> list[tuple[list[int], bool]]:
    """vLLM's beam search written out over the model's full forward: each step, the 2 x width
    most likely next tokens of every live beam; those that are EOS end their beam, the width
    best of the rest by cumulative logprob go on; at the end all beams ranked by cumulative
    logprob / (prompt + beam length) ** length_penalty. The best ``width`` as (tokens,
    ended by EOS). ``model``: another model of that tokenizer (a PEFT model)."""
    tok, base = load(model_dir)
    model = base if model is None else model
    eos = tok.eos_token_id
    live: list[tuple[list[int], float]] = [([], 0.0)]
    ended: list[tuple[list[int], float]] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            candidates = []
            for tokens, score in live:
                logits = model(torch.tensor([prompt_ids + tokens])).logits[0, -1].float()
                top = torch.log_softmax(logits, dim=-1).topk(2 * width)
                for logprob, token in zip(top.values.tolist(), top.indices.tolist(),
                                          strict=True):
                    if token == eos:
                        ended.append((tokens, score + logprob))
                    else:
                        candidates.append(([*tokens, token], score + logprob))
            live = sorted(candidates, key=lambda c: c[1], reverse=True)[:width]
            if not live:
                break
    ranked = sorted([(t, s, True) for t, s in ended] + [(t, s, False) for t, s in live],
                    key=lambda c: c[1] / (len(prompt_ids) + len(c[0])) ** length_penalty,
                    reverse=True)
    return [(t, stopped) for t, _, stopped in ranked[:width]]
