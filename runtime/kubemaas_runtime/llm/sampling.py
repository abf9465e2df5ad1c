"""Sampling: the next token of every row from the last logits.

A request's ``logit_bias`` is added to its row first, then its penalties (vLLM's and OpenAI's
definitions): ``repetition_penalty`` divides the positive logits of every token already in the
prompt or the output and multiplies the negative ones; ``frequency_penalty`` x (times the token
was generated) + ``presence_penalty`` x (whether it was) is subtracted from each generated
token's logit. Both shift greedy choices and logprobs too, as OpenAI's logit bias does. Greedy
rows (temperature 0) are one ``argmax`` for the whole batch; the others are sampled one by one
with temperature, top-k and top-p, each from its own ``torch.Generator`` (seeded from the
request's ``seed``, so the same seed gives the same tokens whatever else is in the batch).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from .structured import allowed_tokens

GREEDY_BELOW = 1e-5  # temperatures under this are greedy


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
    min_p: float = 0.0       # vLLM's: drop tokens less likely than min_p x the most likely
    min_tokens: int = 0      # vLLM's: no EOS, stop token or stop string before this many
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # vLLM's: each prompt token's logprob and the k most likely (prompt_scores.py). None: none
    prompt_logprobs: int | None = None
    allowed_token_ids: tuple[int, ...] = ()  # vLLM's: only these may be drawn (empty: any)
    include_stop_str_in_output: bool = False  # vLLM's: a stop string that ended it stays
    skip_special_tokens: bool = True  # vLLM's: special tokens left out of the text
    # vLLM's bad_words, as token sequences: none may be generated (its last token is barred
    # after the others)
    bad_words: tuple[tuple[int, ...], ...] = ()

    @property
    def greedy(self) -> bool:
        # below vLLM's epsilon, as vLLM does: dividing logits by 1e-40 makes them infinite and
        # the softmax NaN
        return self.temperature < GREEDY_BELOW

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or
                    self.repetition_penalty != 1.0)


@dataclass
class SampleState:
    """Per-sequence sampling state: its random generator and, for penalties, the tokens seen."""

    params: SamplingParams
    generator: torch.Generator | None = field(default=None)
    prompt: frozenset[int] = frozenset()  # with a repetition penalty: the prompt's tokens
    generated: Counter[int] = field(default_factory=Counter)  # with penalties: output counts
    held_back: frozenset[int] = frozenset()  # with min_tokens: the EOS and stop token ids
    emitted: int = 0  # with min_tokens: tokens sampled so far
    drawn: list[int] = field(default_factory=list)  # with bad_words: the output so far
    matcher: Any = None  # with a structured output: its grammar's matcher (structured.py)

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
    rank: int | None = None  # the token's rank in its distribution (1: the most likely)


def _filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k and top-p on one row of float32 logits."""
    logits = logits / params.temperature
    if params.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
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


def penalize(row: torch.Tensor, state: SampleState) -> None:
    """Apply the request's penalties to its row of float32 logits, in place."""
    params = state.params
    if params.repetition_penalty != 1.0:
        seen = state.prompt.union(state.generated)
        if seen:
            ids = torch.tensor(sorted(seen), device=row.device)
            picked = row[ids]
            row[ids] = torch.where(picked > 0, picked / params.repetition_penalty,
                                   picked * params.repetition_penalty)
    if (params.frequency_penalty or params.presence_penalty) and state.generated:
        ids = torch.tensor(list(state.generated), device=row.device)
        counts = torch.tensor(list(state.generated.values()), dtype=row.dtype,
                              device=row.device)
        row[ids] -= params.frequency_penalty * counts + params.presence_penalty


class NotANumber(ArithmeticError):
    """The model's logits for a row are NaN: its request fails, with no token drawn."""


class UnfollowableOutput(ValueError):
    """The request's own limits leave its output no token to go on with (a client error, 400):
    its allowed_token_ids, bad_words, min_tokens and structured output bar every token, or its
    structure accepts next only a token it then refuses."""


def _unfollowable(state: SampleState) -> UnfollowableOutput:
    limits = [name for name, on in (
        ("allowed_token_ids", state.params.allowed_token_ids),
        ("bad_words", state.params.bad_words),
        ("min_tokens", state.emitted < state.params.min_tokens),
        ("the structured output", state.matcher is not None)) if on]
    return UnfollowableOutput(f"no token may come next: {', '.join(limits)} together bar every "
                              "token; loosen one of them")


def _refused(state: SampleState, token: int) -> UnfollowableOutput:
    error = str(state.matcher.get_error()).split("\n")[0] if state.matcher is not None else ""
    return UnfollowableOutput(
        f"the output structure cannot be followed: it allows only token {token} next and then "
        "refuses it, as it does when it spells one of the model's special tokens (such as "
        f"'<|user|>') as text, which this model cannot write as text ({error})")


def _dead_end() -> UnfollowableOutput:
    """llguidance lets EOS end a grammar at a point nothing it allows may follow, and is
    then in error: the output would end incomplete with finish_reason ``stop``."""
    return UnfollowableOutput(
        "the output structure cannot be followed: the output reached a point where nothing it "
        "allows may come next (a schema whose definition is only a reference to itself, for "
        "example)")


class Sampled(NamedTuple):
    tokens: list[int]
    infos: list[TokenLogprobs | None]
    failed: dict[int, Exception]  # rows whose sampling raised: their requests fail, no other


def _shape(row: torch.Tensor, state: SampleState) -> None:
    """The request's logit bias, penalties and held-back tokens, on its row in place."""
    params = state.params
    if params.logit_bias:
        biased, bias = zip(*params.logit_bias, strict=True)
        row[list(biased)] += torch.tensor(bias, device=row.device)
    if params.penalized:
        penalize(row, state)
    # the lowest finite value, not -inf, for the tokens that may not come: a logprob of -inf
    # would be invalid JSON
    # before min_tokens, EOS and the stop tokens cannot be drawn (unless they are every token)
    if state.emitted < params.min_tokens and 0 < len(state.held_back) < row.shape[-1]:
        row[list(state.held_back)] = torch.finfo(row.dtype).min
    if params.bad_words:
        barred = barred_tokens(params.bad_words, state.drawn)
        if barred:
            row[barred] = torch.finfo(row.dtype).min
    if params.allowed_token_ids:
        allowed = torch.zeros(row.shape[-1], dtype=torch.bool, device=row.device)
        allowed[list(params.allowed_token_ids)] = True
        row.masked_fill_(~allowed, torch.finfo(row.dtype).min)
    if state.matcher is not None:  # a structured output: only what its grammar allows next
        held = allowed_tokens(state.matcher, row.shape[-1])
        if held is not None:
            row.masked_fill_(~held.to(row.device), torch.finfo(row.dtype).min)


def barred_tokens(bad_words: tuple[tuple[int, ...], ...], output: list[int]) -> list[int]:
    """The tokens that would complete a bad word after ``output`` (a one-token word always)."""
    return sorted({word[-1] for word in bad_words
                   if len(word) == 1 or (len(output) >= len(word) - 1
                                         and tuple(output[len(output) - len(word) + 1:])
                                         == word[:-1])})


def _draw(row: torch.Tensor, state: SampleState, greedy_token: int) -> int:
    token = greedy_token
    if not state.params.greedy:
        probs = torch.softmax(_filter(row, state.params), dim=-1)
        token = int(torch.multinomial(probs, 1, generator=state.gen(row.device)))
    if state.params.penalized:
        state.generated[token] += 1
    if state.params.min_tokens:
        state.emitted += 1
    if state.params.bad_words:
        state.drawn.append(token)
    if state.matcher is not None and not state.matcher.consume_token(token):
        raise _refused(state, token)
    if state.matcher is not None and state.matcher.is_error():
        raise _dead_end()
    return token


def _logprobs(logp: torch.Tensor, token: int, n: int) -> TokenLogprobs:
    top: tuple[tuple[int, float], ...] = ()
    if n:
        values, ids = torch.topk(logp, min(n, logp.shape[-1]))
        top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprobs(token, float(logp[token]), top)


def sample(logits: torch.Tensor, states: list[SampleState]) -> Sampled:
    """One token per row of ``logits`` ([batch, vocab]). A row whose sampling raises is in
    ``failed`` (its token is meaningless): one request's bad state must not fail the step."""
    logits = logits.float()
    failed: dict[int, Exception] = {}
    for i, state in enumerate(states):
        try:
            _shape(logits[i], state)
        except Exception as exc:
            failed[i] = exc
    best, greedy = logits.max(dim=-1)  # argmax's tokens (the first best), and the values
    tokens = greedy.tolist()
    # one comparison for the whole step: a NaN best (max propagates it), or a best that is
    # barred (the lowest finite value: then every token is)
    for i in (~(best > torch.finfo(logits.dtype).min)).nonzero().flatten().tolist():
        failed.setdefault(i, _unfollowable(states[i]) if best[i] == best[i] else NotANumber(
            "the model's output for this request is not a number (NaN): its weights, or its "
            "LoRA adapter's, overflow"))
    for i, state in enumerate(states):
        if i not in failed:
            try:
                tokens[i] = _draw(logits[i], state, tokens[i])
            except Exception as exc:
                failed[i] = exc
    infos: list[TokenLogprobs | None] = [None] * len(states)
    wanted = [i for i, s in enumerate(states) if s.params.logprobs is not None and i not in failed]
    if wanted:
        logp = torch.log_softmax(logits[wanted], dim=-1)
        for row, i in enumerate(wanted):
            try:
                infos[i] = _logprobs(logp[row], tokens[i], states[i].params.logprobs or 0)
            except Exception as exc:
                failed[i] = exc
    return Sampled(tokens, infos, failed)
