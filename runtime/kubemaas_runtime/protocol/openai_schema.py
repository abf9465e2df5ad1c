"""OpenAI request bodies -> validated generation requests, and the response documents.

Pure: no I/O, no engine. Every problem is an ``ApiError`` with the HTTP status and the
``param`` it concerns; unknown fields are ignored (clients send extras), unsupported features that
would change the answer (``best_of``, ``suffix``, tools, vLLM's unimplemented fields) are
refused, not ignored. A structured output (``response_format``, vLLM's ``structured_outputs``
and ``guided_*``) is checked for shape here and compiled by the server (llm/structured.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..llm.sampling import SamplingParams
from ..llm.structured import Constraint
from .openai_beam import BeamOptions, parse_beam
from .openai_errors import ApiError
from .openai_errors import bad_request as _bad
from .openai_render import ChatRender, DeveloperMessage, parse_render, reasoning_effort
from .openai_structured import output_constraint
from .openai_tools import Tools, message_tool_calls, parse_tools, tool_constraint

ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_STOP = 16
MAX_LOGPROBS = 20
MAX_N = 32  # choices per request: bounds what one request can put in the engine's queue


@dataclass(frozen=True)
class Prompt:
    """One prompt of a completions request: its text, or its token ids."""

    text: str | None
    ids: list[int] | None


@dataclass(frozen=True)
class GenerationRequest:
    chat: bool
    prompts: tuple[Prompt, ...]    # completions: one or more (a batch); chat: none
    messages: list[dict[str, Any]] | None
    max_tokens: int | None         # None: up to max-model-len
    params: SamplingParams
    stream: bool
    include_usage: bool
    logprobs: bool
    model: str | None
    return_token_ids: bool = False  # vLLM's extension: the prompt's and the output's token ids
    # vLLM's: logprobs name each token "token_id:N", not its text (a token that is part of a
    # character reads as U+FFFD alone; RL trainers need the exact ids)
    tokens_as_ids: bool = False
    cache_salt: str | None = None  # vLLM's: shares cached prompt blocks only with the same salt
    n: int = 1  # choices: sequences generated from each prompt
    # completions: each choice starts with its prompt (and its logprobs); chat (vLLM's): with
    # the last message's content when that message is the assistant's (a continued answer)
    echo: bool = False
    constraint: Constraint | None = None  # a structured output: the grammar it follows
    tools: Tools | None = None  # chat: the tools the model may call
    render: ChatRender = field(default_factory=ChatRender)  # chat: how the template renders
    truncate_prompt_tokens: int | None = None  # vLLM's: only the prompt's last k tokens
    bad_words: tuple[str, ...] = ()  # vLLM's: texts never generated (tokenized by the server)
    prompt_logprobs: bool = False  # vLLM's: the answer carries each prompt token's logprobs
    # vLLM's: false drops the reasoning from the answer (and a grammar holds from the first
    # token); reasoning_effort "none" means false
    include_reasoning: bool = True
    continuous_usage: bool = False  # vLLM's continuous_usage_stats: usage on every chunk
    priority: int = 0  # vLLM's: with --scheduling-policy priority, lower is served first
    thinking_token_budget: int | None = None  # vLLM's: then </think> is forced
    beam: BeamOptions | None = None  # vLLM's use_beam_search: n is the beam width

    def choice_params(self, params: SamplingParams | None = None) -> list[SamplingParams]:
        """The sampling parameters of each choice of a prompt (``params``: the request's, or
        the prompt's own): with a seed, choice i samples from seed + i (as vLLM does), so that
        seeded choices differ and each is reproducible."""
        params = params or self.params
        if self.n == 1 or params.seed is None:
            return [params] * self.n
        return [replace(params, seed=(params.seed + i) % (2**63)) for i in range(self.n)]


def _num(doc: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"'{key}' must be a number, got {type(value).__name__}", key)
    if not lo <= value <= hi:
        raise _bad(f"'{key}' must be between {lo} and {hi}, got {value}", key)
    return float(value)


def _int(doc: dict[str, Any], key: str, lo: int | None = None, hi: int | None = None
         ) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{key}' must be an integer, got {type(value).__name__}", key)
    if lo is not None and value < lo:
        raise _bad(f"'{key}' must be at least {lo}, got {value}", key)
    if hi is not None and value > hi:
        raise _bad(f"'{key}' must be at most {hi}, got {value}", key)
    return value


def _truncation(doc: dict[str, Any]) -> int | None:
    """vLLM's ``truncate_prompt_tokens``: the prompt's last k tokens, or -1 (as many as leave
    room for max_tokens within max-model-len: openai_engine.truncated)."""
    value = _int(doc, "truncate_prompt_tokens")
    if value is not None and value < 1 and value != -1:
        raise _bad(f"'truncate_prompt_tokens' must be at least 1, or -1 (the model's maximum "
                   f"length), got {value}", "truncate_prompt_tokens")
    return value


def _bool(doc: dict[str, Any], key: str, default: bool = False) -> bool:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"'{key}' must be a boolean, got {type(value).__name__}", key)
    return value


def _stop(doc: dict[str, Any]) -> tuple[str, ...]:
    value = doc.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _bad("'stop' must be a string or a list of strings", "stop")
    if len(value) > MAX_STOP:
        raise _bad(f"'stop' holds at most {MAX_STOP} strings", "stop")
    if not all(value):  # vLLM's SamplingParams refuses it too: "" would match everywhere
        raise _bad("'stop' cannot contain an empty string", "stop")
    return tuple(value)


def _token_ids(value: Any, key: str, vocab: int) -> list[int]:
    if not isinstance(value, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise _bad(f"'{key}' must be a list of integers", key)
    for t in value:
        if not 0 <= t < vocab:
            raise _bad(f"token id {t} in '{key}' is outside the vocabulary (0..{vocab - 1})",
                       key)
    return value


def _logit_bias(doc: dict[str, Any], vocab: int) -> tuple[tuple[int, float], ...]:
    raw = doc.get("logit_bias")
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise _bad("'logit_bias' must be an object of token id -> bias", "logit_bias")
    out: dict[int, float] = {}  # "5" and "05" are one token: the last wins, on every device
    for key, bias in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise _bad(f"'logit_bias' key {key!r} is not a token id", "logit_bias") from None
        if not 0 <= token < vocab:
            raise _bad(f"token id {token} in 'logit_bias' is outside the vocabulary "
                       f"(0..{vocab - 1})", "logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or \
                not -100 <= bias <= 100:
            raise _bad(f"'logit_bias' for token {token} must be a number in -100..100",
                       "logit_bias")
        out[token] = float(bias)
    return tuple(out.items())


# vLLM's request fields that would change the answer and are not implemented: refused unless
# absent or at this (neutral) value, rather than ignored like unknown fields
_NOT_IMPLEMENTED: dict[str, Any] = {
    "spaces_between_special_tokens": True,
    "logits_processors": None, "chat_template": None,
}


def _refuse_unsupported(doc: dict[str, Any]) -> None:
    best_of = _int(doc, "best_of", 1)
    if best_of not in (None, 1):
        raise _bad("only best_of=1 is supported", "best_of")
    if doc.get("suffix") not in (None, ""):
        raise _bad("suffix is not supported", "suffix")
    for key, neutral in _NOT_IMPLEMENTED.items():
        if key in doc and doc[key] is not None and doc[key] != neutral:
            raise _bad(f"'{key}' is not supported (leave it out)", key)


def _messages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    raw = doc.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("'messages' must be a non-empty list", "messages")
    out = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(f"{where} must be an object", where)
        role = msg.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}",
                       f"{where}.role")
        content = msg.get("content")
        calls = message_tool_calls(msg, where) if role == "assistant" else None
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, list):
            parts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text"
                        and isinstance(part.get("text"), str)):
                    raise _bad(f"{where}.content parts must be {{\"type\": \"text\", "
                               "\"text\": ...}} (only text is supported)", f"{where}.content")
                parts.append(part["text"])
            content = "\n".join(parts)  # as vLLM joins a message's text parts
        if not isinstance(content, str):
            raise _bad(f"{where}.content must be a string or a list of text parts",
                       f"{where}.content")
        message: dict[str, Any] = DeveloperMessage(role="system", content=content) \
            if role == "developer" else {"role": role, "content": content}
        if calls:
            message["tool_calls"] = calls
        reasoning = msg.get("reasoning_content", msg.get("reasoning"))
        if role == "assistant" and isinstance(reasoning, str):
            message["reasoning_content"] = reasoning  # Qwen3's template reads it
        if role == "tool" and isinstance(msg.get("tool_call_id"), str):
            message["tool_call_id"] = msg["tool_call_id"]
        if msg.get("name") is not None:  # the speaker: vLLM hands it to the template too
            if not isinstance(msg["name"], str):
                raise _bad(f"{where}.name must be a string", f"{where}.name")
            message["name"] = msg["name"]
        out.append(message)
    return out


def _chat_fields(doc: dict[str, Any]) -> tuple[list[dict[str, Any]], int | None, int | None]:
    """A chat body's messages, max tokens and top-logprobs count (None: no logprobs)."""
    messages = _messages(doc)
    max_tokens = _int(doc, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _int(doc, "max_tokens", 1)
    want = _bool(doc, "logprobs")
    top = _int(doc, "top_logprobs", 0, MAX_LOGPROBS)
    if top and not want:
        raise _bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return messages, max_tokens, (top or 0) if want else None


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def _prompts(doc: dict[str, Any], vocab: int) -> tuple[Prompt, ...]:
    """A completions body's prompts: a string or a list of token ids (one prompt), or a list
    of strings or of token-id lists (a batch, answered as one choice per prompt and ``n``)."""
    prompt = doc.get("prompt")
    if isinstance(prompt, str):
        return (Prompt(prompt, None),)
    if _is_ids(prompt):
        return (Prompt(None, _token_ids(prompt, "prompt", vocab)),)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return tuple(Prompt(p, None) for p in prompt)
    if isinstance(prompt, list) and prompt and all(_is_ids(p) for p in prompt):
        return tuple(Prompt(None, _token_ids(p, f"prompt[{i}]", vocab))
                     for i, p in enumerate(prompt))
    raise _bad("'prompt' must be a string, a list of token ids, or a non-empty list of either "
               "kind (strings, or lists of token ids: not both)", "prompt")


def _completion_max_tokens(doc: dict[str, Any], echo: bool) -> int | None:
    """``max_tokens`` of a completions request; 0 (the prompt alone) only with ``echo``."""
    max_tokens = _int(doc, "max_tokens", 0 if echo else 1)
    if doc.get("max_tokens", 0) is None:
        return None
    if "max_tokens" not in doc:
        return 16  # the OpenAI completions default
    return max_tokens


def _stream_fields(doc: dict[str, Any]) -> tuple[bool, bool, bool]:
    """``stream``, ``stream_options.include_usage`` and vLLM's
    ``stream_options.continuous_usage_stats`` (with include_usage: usage on every chunk)."""
    stream = _bool(doc, "stream")
    options = doc.get("stream_options")
    include_usage = continuous = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("'stream_options' must be an object", "stream_options")
        if not stream:
            raise _bad("'stream_options' is only allowed with 'stream': true", "stream_options")
        include_usage = _bool(options, "include_usage")
        continuous = _bool(options, "continuous_usage_stats") and include_usage
    return stream, include_usage, continuous


def _sampling_params(doc: dict[str, Any], vocab: int, max_tokens: int | None,
                     logprobs_n: int | None, prompt_logprobs_n: int | None) -> SamplingParams:
    stop_ids = doc.get("stop_token_ids")
    seed = _int(doc, "seed", -(2**63), 2**63 - 1)
    top_k = _int(doc, "top_k", -1)
    return SamplingParams(
        max_tokens=1 if max_tokens is None else max_tokens,
        temperature=_num(doc, "temperature", 1.0, 0.0, 2.0),
        top_p=_num(doc, "top_p", 1.0, 1e-9, 1.0),
        top_k=0 if top_k in (None, -1) else top_k,
        seed=None if seed is None else seed % (2**63),
        stop=_stop(doc),
        stop_token_ids=tuple(_token_ids(stop_ids, "stop_token_ids", vocab)) if stop_ids
        is not None else (),
        ignore_eos=_bool(doc, "ignore_eos"),
        logprobs=logprobs_n,
        logit_bias=_logit_bias(doc, vocab),
        min_p=_num(doc, "min_p", 0.0, 0.0, 1.0),
        min_tokens=_min_tokens(doc, max_tokens),
        presence_penalty=_num(doc, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_num(doc, "frequency_penalty", 0.0, -2.0, 2.0),
        # it divides positive logits: a floor keeps them finite (an infinite logit makes the
        # softmax NaN, and the request would fail)
        repetition_penalty=_num(doc, "repetition_penalty", 1.0, 0.01, 10.0),
        prompt_logprobs=prompt_logprobs_n,
        allowed_token_ids=_allowed_token_ids(doc, vocab),
        include_stop_str_in_output=_bool(doc, "include_stop_str_in_output"),
        skip_special_tokens=_bool(doc, "skip_special_tokens", True),
    )


MAX_BAD_WORDS = 64


def _bad_words(doc: dict[str, Any]) -> tuple[str, ...]:
    value = doc.get("bad_words")
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_BAD_WORDS or \
            not all(isinstance(w, str) and 0 < len(w.strip()) <= 100 for w in value):
        raise _bad(f"'bad_words' must be a list of at most {MAX_BAD_WORDS} non-empty strings "
                   "of at most 100 characters", "bad_words")
    return tuple(value)


def _allowed_token_ids(doc: dict[str, Any], vocab: int) -> tuple[int, ...]:
    value = doc.get("allowed_token_ids")
    if value is None:
        return ()
    ids = _token_ids(value, "allowed_token_ids", vocab)
    if not ids:
        raise _bad("'allowed_token_ids' must name at least one token", "allowed_token_ids")
    return tuple(sorted(set(ids)))


def _min_tokens(doc: dict[str, Any], max_tokens: int | None) -> int:
    value = _int(doc, "min_tokens", 0) or 0
    if max_tokens is not None and value > max_tokens:
        raise _bad(f"'min_tokens' ({value}) must not exceed the maximum tokens ({max_tokens})",
                   "min_tokens")
    return value


def _cache_salt(doc: dict[str, Any]) -> str | None:
    salt = doc.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise _bad("'cache_salt' must be a non-empty string", "cache_salt")
    return salt


def parse_request(doc: Any, chat: bool, vocab: int, tokens_as_ids: bool = False
                  ) -> GenerationRequest:
    """Validate a /v1/completions or /v1/chat/completions body (``tokens_as_ids``: the
    server's default for ``return_tokens_as_token_ids``)."""
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = _model(doc)
    _refuse_unsupported(doc)
    prompts: tuple[Prompt, ...] = ()
    messages = None
    echo = _bool(doc, "echo")
    tools = None
    if chat:
        messages, max_tokens, logprobs_n = _chat_fields(doc)
        tools = parse_tools(doc)
        render = parse_render(doc)
    else:
        for key in ("add_generation_prompt", "continue_final_message", "chat_template_kwargs",
                    "reasoning_effort", "include_reasoning", "documents",
                    "thinking_token_budget"):
            if doc.get(key) is not None:
                raise _bad(f"'{key}' is a /v1/chat/completions field", key)
        render = ChatRender()
        if doc.get("tools") or doc.get("tool_choice") is not None:
            raise _bad("tools are a /v1/chat/completions field", "tools")
        prompts = _prompts(doc, vocab)
        max_tokens = _completion_max_tokens(doc, echo)
        logprobs_n = _int(doc, "logprobs", 0, MAX_LOGPROBS)
    prompt_logprobs_n = _int(doc, "prompt_logprobs", 0, MAX_LOGPROBS)
    scored = prompt_logprobs_n
    if scored is None and echo and logprobs_n is not None and not chat:
        scored = logprobs_n  # the echoed prompt carries its logprobs (as vLLM does)
    stream, include_usage, continuous_usage = _stream_fields(doc)
    params = _sampling_params(doc, vocab, max_tokens, logprobs_n, scored)
    return parse_beam(doc, GenerationRequest(chat=chat, prompts=prompts, messages=messages,
                             max_tokens=max_tokens, params=params, stream=stream,
                             include_usage=include_usage, continuous_usage=continuous_usage,
                             logprobs=logprobs_n is not None,
                             model=model, return_token_ids=_bool(doc, "return_token_ids"),
                             tokens_as_ids=_bool(doc, "return_tokens_as_token_ids",
                                                 tokens_as_ids),
                             cache_salt=_cache_salt(doc), n=_int(doc, "n", 1, MAX_N) or 1,
                             echo=echo, prompt_logprobs=prompt_logprobs_n is not None,
                             constraint=_constraint(doc, tools), tools=tools, render=render,
                             truncate_prompt_tokens=_truncation(doc),
                             bad_words=_bad_words(doc),
                             include_reasoning=_bool(doc, "include_reasoning", True)
                             and reasoning_effort(doc) != "none",
                             thinking_token_budget=_int(doc, "thinking_token_budget", 0),
                             priority=_int(doc, "priority", -(2**63), 2**63 - 1) or 0))


def _constraint(doc: dict[str, Any], tools: Tools | None) -> Constraint | None:
    """The output's structure: from the structured-output fields, or from a named or required
    tool choice (not both)."""
    given = output_constraint(doc)
    forced = tool_constraint(tools)
    if given is not None and forced is not None:
        raise _bad("a named or required tool_choice already decides the output's structure; "
                   "leave out the structured-output field", given.param)
    if forced is not None and doc.get("min_tokens"):
        raise _bad("'min_tokens' cannot be combined with a named or required tool_choice",
                   "min_tokens")
    return given or forced


@dataclass(frozen=True)
class TokenizeRequest:
    """vLLM's ``POST /tokenize``: a prompt, or chat messages (and the tools they may call)
    rendered by the chat template."""

    model: str | None
    prompt_text: str | None
    messages: list[dict[str, Any]] | None
    add_special_tokens: bool
    render: ChatRender
    return_token_strs: bool
    tools: list[dict[str, Any]] | None = None


def _model(doc: dict[str, Any]) -> str | None:
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("'model' must be a string", "model")
    return model


def parse_tokenize(doc: Any, generation_default: bool = True) -> TokenizeRequest:
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
    chat = "messages" in doc
    prompt = doc.get("prompt")
    if not chat and not isinstance(prompt, str):
        raise _bad("'prompt' must be a string (or send 'messages')", "prompt")
    tools = parse_tools(doc) if chat else None
    return TokenizeRequest(
        tools=list(tools.tools) if tools is not None else None,
        model=_model(doc), prompt_text=None if chat else prompt,
        messages=_messages(doc) if chat else None,
        # as vLLM: a prompt gets the tokenizer's special tokens, a rendered chat does not
        add_special_tokens=_bool(doc, "add_special_tokens", not chat),
        render=parse_render(doc, generation_default) if chat else ChatRender(),
        return_token_strs=_bool(doc, "return_token_strs"))


def parse_detokenize(doc: Any, vocab: int) -> tuple[str | None, list[int]]:
    """vLLM's ``POST /detokenize``: the model and the token ids."""
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return _model(doc), _token_ids(doc.get("tokens"), "tokens", vocab)
