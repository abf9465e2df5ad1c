"""What the OpenAI endpoints hand the engine: the loaded model's handles (``Served``), each
prompt's sampling parameters fitted to the context, a structured output's grammar matchers,
and the request's sequences submitted, all of them or none."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..llm.beam import BeamSearch
from ..llm.detok import encoder
from ..llm.engine import Engine
from ..llm.lora import AdapterError, LoraSet
from ..llm.queue_room import Overloaded
from ..llm.sampling import SamplingParams
from ..llm.structured import AfterThinking, Grammars, InvalidConstraint
from ..metrics import LLMMetrics
from .openai_answer import Choice
from .openai_errors import ApiError
from .openai_reasoning import prompt_opens_think
from .openai_schema import GenerationRequest


@dataclass
class Served:
    """What the endpoints need once the model is loaded."""

    engine: Engine
    metrics: LLMMetrics
    tokenizer: Any
    max_model_len: int
    vocab_size: int
    # text, add special tokens -> ids: on the event loop, and in a worker thread
    encode: Callable[[str, bool], list[int]] = field(init=False)
    encode_off_loop: Callable[[str, bool], list[int]] = field(init=False)

    # with a reasoning parser, <think> and </think> when each is one token: a grammar then
    # holds the answer after the reasoning
    think_ids: tuple[int, int] | None = None
    loras: LoraSet | None = None  # with LoRA on: the adapters requests may name
    # with runtime LoRA updating: an adapter's URI -> its local directory (blocking)
    fetch_adapter: Callable[[str], Path] | None = None
    grammars: Grammars = field(init=False)  # structured outputs' grammars

    def __post_init__(self) -> None:
        self.encode = encoder(self.tokenizer)
        self.encode_off_loop = encoder(self.tokenizer, keep_gil=False)
        self.grammars = Grammars(self.tokenizer, self.vocab_size, self.engine.lm.eos_ids)


def fit(served: Served, req: GenerationRequest, prompt: list[int],
         bad_words: tuple[tuple[int, ...], ...] = ()) -> SamplingParams:
    """The prompt's sampling parameters, its completion held within max-model-len."""
    limit = served.max_model_len
    if not prompt:
        raise ApiError(400, "the prompt is empty", "prompt")
    wanted = req.max_tokens if req.max_tokens is not None else max(limit - len(prompt), 0)
    if len(prompt) + max(wanted, 1) > limit:
        room = f"{wanted} for the completion" if wanted else "1 for the completion" + (
            ": with max_tokens 0 a prompt must still leave room for one"
            if req.max_tokens == 0 else "")  # (none asked: as many as fit, at least one)
        raise ApiError(400, f"This model's maximum context length is {limit} tokens. "
                       f"However, you requested {len(prompt) + max(wanted, 1)} tokens "
                       f"({len(prompt)} in the prompt, {room}). "
                       "Shorten the prompt or lower max_tokens.",
                       "messages" if req.chat else "prompt", "context_length_exceeded")
    if req.params.max_tokens == wanted and not bad_words:
        return req.params
    return replace(req.params, max_tokens=wanted, bad_words=bad_words)


def truncated(served: Served, req: GenerationRequest, prompts: list[list[int]]
              ) -> list[list[int]]:
    """vLLM's ``truncate_prompt_tokens``: each prompt's last k tokens; -1 is as many as
    max-model-len holds beside max_tokens (vLLM's max_input_tokens); a k over max-model-len is
    refused (it could never apply)."""
    keep, limit = req.truncate_prompt_tokens, served.max_model_len
    if not keep:
        return prompts
    if keep == -1:
        keep = limit - (req.max_tokens or 0)
        if keep < 1:
            raise ApiError(400, f"'truncate_prompt_tokens' -1 keeps max-model-len ({limit}) "
                           f"less max_tokens ({req.max_tokens}) tokens: none",
                           "truncate_prompt_tokens")
    elif keep > limit:
        raise ApiError(400, f"'truncate_prompt_tokens' ({keep}) is greater than the model's "
                       f"maximum length ({limit})", "truncate_prompt_tokens")
    return [p[-keep:] for p in prompts]


def markers_kept(req: GenerationRequest, tool_parser: str) -> GenerationRequest:
    """Mistral's call markers (``[TOOL_CALLS]``, ``[ARGS]``) are special tokens: with tools
    to read, they stay in the text, as vLLM keeps them for its mistral parser."""
    if tool_parser != "mistral" or req.tools is None or req.tools.choice != "auto" or \
            not req.params.skip_special_tokens:
        return req
    return replace(req, params=replace(req.params, skip_special_tokens=False))


def bad_word_ids(served: Served, words: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """vLLM's bad_words as token sequences: each word as written and after a space (the
    way it is tokenized inside a text), special tokens left out."""
    ids = {tuple(served.encode(form, False)) for word in words
           for form in (word.strip(), " " + word.strip())}
    return tuple(sorted(i for i in ids if i))


def check_sequences(served: Served, count: int) -> None:
    """A request whose prompts x n exceed what the engine may hold could never be
    served: 400, not a 429 to retry forever."""
    limit = served.engine.cfg.max_queue
    if count > limit:
        raise ApiError(400, f"the request asks for {count} sequences (prompts x n); this "
                       f"server holds at most {limit} at once", "n")


def thinks_first(served: Served, req: GenerationRequest) -> bool:
    """A chat answer whose grammar holds after the reasoning (not when the reasoning is not
    wanted, as vLLM)."""
    return served.think_ids is not None and req.chat and req.include_reasoning


async def matchers(served: Served, req: GenerationRequest, prompts: list[list[int]]
                   ) -> list[Any]:
    """What holds each sequence's output (``n`` per prompt), or Nones: a structured output's
    grammar (compiled in a worker thread: a large schema takes a while), after the reasoning
    when the model thinks first; the thinking's token budget."""
    count = len(prompts) * req.n
    budget = req.thinking_token_budget
    if budget is not None and not thinks_first(served, req):
        raise ApiError(400, "'thinking_token_budget' needs a reasoning model whose tokenizer "
                       "has <think> and </think> as tokens of their own (and the reasoning "
                       "included)", "thinking_token_budget")
    found: list[Any] = [None] * count
    if req.constraint is not None:
        try:
            found = await asyncio.get_running_loop().run_in_executor(
                None, served.grammars.matchers, req.constraint, count)
        except InvalidConstraint as exc:
            raise ApiError(400, f"the output structure does not compile: {str(exc)[:800]}",
                           req.constraint.param) from None
    if served.think_ids is None or not thinks_first(served, req) or (
            req.constraint is None and budget is None):
        return found
    think, end = served.think_ids
    opened = [prompt_opens_think(served.tokenizer, p) for p in prompts for _ in range(req.n)]
    return [AfterThinking(m, think, end, o, budget) for m, o in zip(found, opened, strict=True)]


def submit(served: Served, req: GenerationRequest, prompts: list[list[int]],
            params: list[SamplingParams], echo_texts: list[str],
            matchers: list[Any] | None = None, lora: int = 0) -> list[Choice]:
    """One engine sequence per choice (``n`` per prompt); all of them or none (429). ``lora``:
    the LoRA adapter's id (0: the base model)."""
    if req.priority and served.engine.cfg.scheduling_policy != "priority":
        raise ApiError(400, "'priority' orders requests only on a server started with "
                       "--scheduling-policy priority (this one serves in arrival order)",
                       "priority")
    choices: list[Choice] = []
    matchers = matchers or [None] * (len(prompts) * req.n)
    try:
        for prompt, prompt_params, echo_text in zip(prompts, params, echo_texts,
                                                    strict=True):
            lengths: list[int] = []
            if req.beam is not None:  # n answers of one search, best first
                search = BeamSearch(served.engine, prompt, prompt_params, req.n,
                                    req.beam.length_penalty, req.cache_salt, req.priority,
                                    lora)
                choices += [Choice(len(choices) + j, answer, prompt, j == 0, echo_text, lengths)
                            for j, answer in enumerate(search.answers)]
                continue
            for j, choice_params in enumerate(req.choice_params(prompt_params)):
                stream = served.engine.submit(prompt, choice_params, req.cache_salt,
                                              matchers[len(choices)], req.priority, lora)
                choices.append(Choice(len(choices), stream, prompt, j == 0, echo_text, lengths))
    except AdapterError:  # unloaded since the request named it
        for choice in choices:
            choice.stream.cancel()
        raise ApiError(404, f"The model '{req.model}' does not exist (its LoRA adapter was "
                       "unloaded).", "model", "model_not_found") from None
    except Overloaded as exc:
        for choice in choices:
            choice.stream.cancel()
        served.metrics.rejected.inc(served.metrics.label)
        raise ApiError(429, f"too many requests: {exc}; retry later",
                       code="rate_limit_exceeded", retry_after=1) from None
    return choices
