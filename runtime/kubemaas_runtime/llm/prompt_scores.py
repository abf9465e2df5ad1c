"""Prompt logprobs: how likely the model finds each token of a prompt given the ones before it.

Evaluation harnesses score answers this way (a completions request with ``echo``, ``logprobs``
and ``max_tokens: 0``), and vLLM's ``prompt_logprobs`` asks for it directly. The logits at
prompt position p are the model's distribution over token p + 1, so while a scored prompt is
prefilled the step keeps those positions' logits too (packing.py) and this module turns them
into logprobs: the model's raw distribution (no temperature, bias or penalty, as vLLM reports
them), the prompt token's logprob and rank, and the ``k`` most likely tokens. The first token
has nothing before it and no logprob.

A scored prompt is read in full, not from the prefix cache: a cached block has no logits.
"""

from __future__ import annotations

import torch

from .sampling import TokenLogprobs


def scored_span(done: int, prompt_len: int, offset: int, n: int) -> tuple[int, int]:
    """The positions ``[lo, hi)`` of a prefill chunk (``n`` tokens from ``offset``) whose
    logits score a prompt token not scored yet (``done`` are: positions before ``done``).
    Position p scores token p + 1, so the prompt's last position scores nothing (its logits
    are the first sampled token's). Empty when ``lo >= hi``; a chunk read again after a
    preemption scores nothing twice."""
    return max(offset, done), min(offset + n, prompt_len - 1)


def score(logits: torch.Tensor, targets: list[int], k: int) -> list[TokenLogprobs]:
    """``logits`` [T, vocab] at T consecutive prompt positions, ``targets`` the T tokens that
    followed them: each target's logprob and rank (1: the most likely) and the top ``k``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(targets, device=logp.device)
    picked = logp.gather(1, target[:, None])[:, 0]
    ranks = (logp > picked[:, None]).sum(dim=-1) + 1
    top_values, top_ids = (torch.topk(logp, min(k, logp.shape[-1])) if k else
                           (logp[:, :0], target[:, None][:, :0]))
    return [TokenLogprobs(token, value, tuple(zip(ids, values, strict=True)), rank)
            for token, value, rank, ids, values in zip(
                targets, picked.tolist(), ranks.tolist(), top_ids.tolist(),
                top_values.tolist(), strict=True)]
