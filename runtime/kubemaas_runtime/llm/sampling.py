"""Sampling: the next token of every row from the last logits.

A request's ``logit_bias`` is added to its row first (so it shifts greedy choices and logprobs
too, as OpenAI's does). Greedy rows (temperature 0) are one ``argmax`` for the whole batch; the
others are sampled one by one with temperature, top-k and top-p, each from its own
``torch.Generator`` (seeded from the request's ``seed``, so the same seed gives the same tokens
whatever else is in the batch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0          # 0 (or -1): no top-k
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; n >= 0: the chosen token's and the n most likely
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit), OpenAI's

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class SampleState:
    """Per-sequence sampling state: its random generator."""

    params: SamplingParams
    generator: torch.Generator | None = field(default=None)

    def gen(self, device: torch.device) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator(device=device)
            seed = self.params.seed
            self.generator.manual_seed(seed if seed is not None else random.getrandbits(63))
        return self.generator


@dataclass(frozen=True)
class TokenLogprobs:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def _filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k and top-p on one row of float32 logits."""
    logits = logits / params.temperature
    k = params.top_k
    if 0 < k < logits.shape[-1]:
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        cumulative = torch.cumsum(probs, dim=-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop = (cumulative - probs) >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    return logits


def sample(logits: torch.Tensor, states: list[SampleState]
           ) -> tuple[list[int], list[TokenLogprobs | None]]:
    """One token per row of ``logits`` ([batch, vocab])."""
    logits = logits.float()
    for i, state in enumerate(states):
        if state.params.logit_bias:
            biased, bias = zip(*state.params.logit_bias, strict=True)
            logits[i, list(biased)] += torch.tensor(bias, device=logits.device)
    tokens = logits.argmax(dim=-1).tolist()
    for i, state in enumerate(states):
        if not state.params.greedy:
            probs = torch.softmax(_filter(logits[i], state.params), dim=-1)
            tokens[i] = int(torch.multinomial(probs, 1, generator=state.gen(logits.device)))
    infos: list[TokenLogprobs | None] = [None] * len(states)
    wanted = [i for i, s in enumerate(states) if s.params.logprobs is not None]
    if wanted:
        logp = torch.log_softmax(logits[wanted], dim=-1)
        for row, i in enumerate(wanted):
            n = states[i].params.logprobs or 0
            top: tuple[tuple[int, float], ...] = ()
            if n:
                values, ids = torch.topk(logp[row], min(n, logp.shape[-1]))
                top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
            infos[i] = TokenLogprobs(tokens[i], float(logp[row, tokens[i]]), top)
    return tokens, infos
