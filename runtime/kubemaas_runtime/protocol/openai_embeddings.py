"""``POST /v1/embeddings`` for an embedding model (``--runner pooling``), as OpenAI and vLLM
answer it: ``input`` a string, a list of strings, a list of token ids or a list of such lists;
``encoding_format`` float or base64 (little-endian float32, what the openai client decodes);
``dimensions`` for a model trained to be cut (Matryoshka: the first N values, normalized again);
vLLM's ``truncate_prompt_tokens``, ``add_special_tokens`` and ``normalize``, and its chat
embedding request: ``messages`` (rendered by the chat template) instead of ``input``. The answer: a
``list`` of ``embedding`` objects in input order, and its ``usage``."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..llm.classify import Classifier
from ..llm.detok import encoder
from ..llm.pooling import Embedder, Overloaded
from ..llm.request_stream import ShuttingDown
from ..metrics import LLMMetrics
from ..security.usage import current_usage
from .openai_errors import ApiError, bad_request
from .openai_request_id import request_id
from .openai_tokens import TOKENIZE_OFF_LOOP_CHARS

MAX_INPUTS = 2048  # OpenAI's limit of inputs in one request


@dataclass
class Pooled:
    """What the embeddings endpoint needs once the model is loaded."""

    embedder: Embedder
    metrics: LLMMetrics
    tokenizer: Any
    max_model_len: int
    vocab_size: int
    hidden_size: int
    matryoshka: tuple[int, ...] | bool
    classifier: Classifier | None = None  # a classifier (/classify, /score) instead
    lower_case: bool = False  # sentence-transformers' do_lower_case: texts lower-cased first
    encode: Any = field(init=False)
    encode_off_loop: Any = field(init=False)

    @property
    def task(self) -> str:
        """vLLM's name of what the model is served for: embed, classify, token_classify."""
        return "embed" if self.classifier is None else self.classifier.task

    def kind(self) -> str:
        """The model, in words, for errors."""
        return {"embed": "an embedding model", "classify": "a classifier",
                "token_classify": "a token classifier"}[self.task]

    def routes(self) -> str:
        """The routes this model answers, for the errors of the others."""
        if self.classifier is None:
            return "/v1/embeddings, /score and /rerank"
        if self.classifier.per_token:
            return "/pooling (task token_classify) only"
        if self.classifier.num_labels == 1:  # a cross-encoder
            return "/classify, /score and /rerank"
        return "/classify"

    def __post_init__(self) -> None:
        self.encode = encoder(self.tokenizer)
        self.encode_off_loop = encoder(self.tokenizer, keep_gil=False)


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str | None
    texts: list[str] | None  # or
    token_ids: list[list[int]] | None
    base64: bool
    dimensions: int | None
    truncate: int | None
    add_special_tokens: bool
    normalize: bool | None


def token_lists(value: Any, vocab: int) -> list[list[int]] | None:
    """A list of ids, or a list of such lists; None when ``value`` is neither."""
    if not isinstance(value, list) or not value:
        return None
    rows = value if all(isinstance(v, list) for v in value) else [value]
    for row in rows:
        if not row or not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
            return None
        if any(not 0 <= t < vocab for t in row):
            raise bad_request(f"token ids must be in [0, {vocab})", "input")
    return [list(row) for row in rows]


def optional(doc: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """``doc[key]`` checked to be of ``kind``; absent or null: ``default``."""
    value = doc.get(key)
    if value is None:
        return default
    if (not isinstance(value, kind) or isinstance(value, bool) != (
            kind is bool)):
        raise bad_request(f"'{key}' must be {'a boolean' if kind is bool else 'an integer'}",
                          key)
    return value


def parse_inputs(doc: Any, vocab: int, chat_ids: list[int] | None
                 ) -> tuple[list[str] | None, list[list[int]] | None]:
    """A request's ``input`` (texts, or token ids); ``chat_ids``: the tokens of its
    ``messages`` (vLLM's chat form of a pooling request), which then stand for ``input``."""
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
    value = doc.get("input")
    texts: list[str] | None = None
    if chat_ids is not None and value is not None:
        raise bad_request("send 'input' or 'messages', not both", "input")
    ids = [chat_ids] if chat_ids is not None else token_lists(value, vocab)
    if ids is None:
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or \
                not all(isinstance(t, str) for t in texts):
            raise bad_request("'input' must be a string, a list of strings, a list of token "
                              "ids or a list of lists of token ids, not empty", "input")
        if any(not t for t in texts):
            raise bad_request("'input' may not hold an empty string", "input")
    if len(texts or ids or ()) > MAX_INPUTS:
        raise bad_request(f"'input' holds more than {MAX_INPUTS} inputs", "input")
    return texts, ids


def parse_common(doc: dict[str, Any]) -> tuple[str | None, int | None]:
    """``model`` and ``truncate_prompt_tokens``, as every pooling request has them."""
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model")
    truncate = optional(doc, "truncate_prompt_tokens", int)
    if truncate is not None and truncate < 1 and truncate != -1:
        raise bad_request("'truncate_prompt_tokens' must be at least 1, or -1 (the model's "
                          "maximum length)", "truncate_prompt_tokens")
    return model, truncate


def truncation(pooled: Pooled, truncate: int | None) -> int | None:
    """vLLM's rule for ``truncate_prompt_tokens``: -1 is the model's maximum length, and a
    length over it is refused (it could never apply)."""
    if truncate == -1:
        return pooled.max_model_len
    if truncate is not None and truncate > pooled.max_model_len:
        raise bad_request(f"'truncate_prompt_tokens' ({truncate}) is greater than the "
                          f"model's maximum length ({pooled.max_model_len})",
                          "truncate_prompt_tokens")
    return truncate


def parse_embedding(doc: Any, vocab: int, chat_ids: list[int] | None = None
                    ) -> EmbeddingRequest:
    texts, ids = parse_inputs(doc, vocab, chat_ids)
    fmt = doc.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise bad_request("'encoding_format' must be float or base64", "encoding_format")
    model, truncate = parse_common(doc)
    dims = optional(doc, "dimensions", int)
    if dims is not None and dims < 1:
        raise bad_request("'dimensions' must be at least 1", "dimensions")
    return EmbeddingRequest(model, texts, ids, fmt == "base64", dims, truncate,
                            optional(doc, "add_special_tokens", bool, chat_ids is None),
                            optional(doc, "normalize", bool))


def check_dimensions(pooled: Pooled, dims: int | None) -> None:
    if dims is None or dims == pooled.hidden_size:
        return
    cuts = pooled.matryoshka
    if cuts is False or (isinstance(cuts, tuple) and dims not in cuts):
        known = f": it was trained for {list(cuts)}" if isinstance(cuts, tuple) else \
            " (its config.json says neither is_matryoshka nor matryoshka_dimensions)"
        raise bad_request(f"this model's embeddings cannot be cut to {dims} dimensions{known}",
                          "dimensions")
    if dims > pooled.hidden_size:
        raise bad_request(f"'dimensions' is over the model's {pooled.hidden_size}",
                          "dimensions")


def input_label(i: int) -> tuple[str, str]:
    """How an error names input ``i``, and the parameter it was in."""
    return f"input {i}", "input"


async def tokenize_inputs(pooled: Pooled, texts: list[str] | None,
                          token_ids: list[list[int]] | None, special: bool,
                          truncate: int | None,
                          label: Callable[[int], tuple[str, str]] = input_label
                          ) -> list[list[int]]:
    """Each input's token ids (``truncate``: its last so many; a text's special tokens kept),
    each checked against the model's length (``label``: how an error names the input)."""
    if texts is not None and pooled.lower_case:
        texts = [t.lower() for t in texts]
    truncate = truncation(pooled, truncate)
    if token_ids is not None:
        inputs = [ids[-truncate:] for ids in token_ids] if truncate else token_ids
    else:
        if truncate is not None and special:
            _check_room(pooled, truncate)
        inputs = await _encode_texts(pooled, texts or [], special, truncate)
    for i, ids in enumerate(inputs):
        what, param = label(i)
        if not ids:
            raise bad_request(f"{what} has no tokens", param)
        check_length(pooled, len(ids), what, param)
    return inputs


def _check_room(pooled: Pooled, truncate: int) -> None:
    """A cut to the text's special tokens or fewer would keep no token of the text."""
    specials = pooled.tokenizer.num_special_tokens_to_add(pair=False)
    if specials and truncate <= specials:
        raise bad_request(f"'truncate_prompt_tokens' ({truncate}) leaves no room for the text: "
                          f"this model's input takes {specials} special tokens, so it must be "
                          f"at least {specials + 1}", "truncate_prompt_tokens")


async def _encode_texts(pooled: Pooled, texts: list[str], special: bool, truncate: int | None
                        ) -> list[list[int]]:
    """The texts' ids, cut as vLLM's tokenizer call (``truncation``, ``max_length``, from the
    left) cuts them: the last tokens of the text, between its special tokens."""
    def run(encode: Callable[[str, bool], list[int]]) -> list[list[int]]:
        out = []
        for text in texts:
            ids = encode(text, special)
            if truncate is not None and len(ids) > truncate:
                ids = keep_specials(ids, encode(text, False), truncate) if special else \
                    ids[-truncate:]
            out.append(ids)
        return out

    if sum(map(len, texts)) > TOKENIZE_OFF_LOOP_CHARS:
        return await asyncio.get_running_loop().run_in_executor(
            None, run, pooled.encode_off_loop)
    return run(pooled.encode)


def keep_specials(full: list[int], plain: list[int], keep: int) -> list[int]:
    """``full`` (the text with its special tokens) cut to ``keep`` tokens: its leading and
    trailing special tokens, and the last tokens of ``plain`` (the text without them)
    between; ``full[-keep:]`` where ``full`` is not ``plain`` wrapped so."""
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            head, tail = full[:start], full[start + len(plain):]
            room = keep - len(head) - len(tail)
            if room > 0:
                return head + plain[-room:] + tail
            break
    return full[-keep:]


def check_length(pooled: Pooled, tokens: int, what: str, param: str) -> None:
    if tokens > pooled.max_model_len:
        raise ApiError(400, f"This model's maximum context length is {pooled.max_model_len} "
                       f"tokens. However, {what} has {tokens} tokens.", param,
                       "context_length_exceeded")


def check_model(name: str | None, model_name: str) -> None:
    if name is not None and name != model_name:
        raise ApiError(404, f"The model '{name}' does not exist; this server serves "
                       f"'{model_name}'.", "model", "model_not_found")


async def run_pooled(pooled: Pooled, inputs: list[list[int]], model_name: str,
                     types: list[list[int]] | None = None, per_token: bool = False
                     ) -> list[torch.Tensor]:
    """The model's row for each input (``per_token``: each of its tokens' rows), and the
    request counted in the metrics and the caller's token usage; a full queue is a 429."""
    arrival = time.monotonic()
    m = pooled.metrics
    try:
        rows = await pooled.embedder.embed(inputs, types, per_token)
    except Overloaded as exc:
        m.rejected.inc(m.label)
        raise ApiError(429, f"too many requests: {exc}; retry later",
                       code="rate_limit_exceeded", retry_after=1) from None
    except ShuttingDown as exc:  # still waiting or running when the drain timed out
        raise ApiError(503, str(exc), retry_after=1) from None
    tokens = sum(len(ids) for ids in inputs)
    m.prompt_tokens.inc(m.label, tokens)
    m.e2e.observe(m.label, time.monotonic() - arrival)
    m.success.inc((model_name, "stop"))
    usage = current_usage.get()  # per-key token limits (security/gate.py)
    if usage is not None:
        usage.add(tokens)
    return rows


def _vector_doc(vector: torch.Tensor, req: EmbeddingRequest, index: int) -> dict[str, Any]:
    values = vector.numpy().astype("<f4")
    encoded: Any = base64.b64encode(values.tobytes()).decode() if req.base64 else \
        values.tolist()
    return {"object": "embedding", "embedding": encoded, "index": index}


def _finish(vectors: list[torch.Tensor], req: EmbeddingRequest, normalize: bool
            ) -> list[torch.Tensor]:
    """The pooled vectors cut to ``dimensions``, then normalized when the model's pooling
    (or the request's ``normalize``) says so, as vLLM's pooler does."""
    out = torch.stack(vectors)
    if req.dimensions is not None:
        out = out[:, :req.dimensions]
    if normalize if req.normalize is None else req.normalize:
        out = torch.nn.functional.normalize(out, dim=-1)
    return list(out)


async def embeddings(pooled: Pooled, doc: Any, model_name: str,
                     chat_ids: list[int] | None = None) -> dict[str, Any]:
    req = parse_embedding(doc, pooled.vocab_size, chat_ids)
    check_model(req.model, model_name)
    if pooled.classifier is not None:
        raise ApiError(400, f"the model '{model_name}' is {pooled.kind()}: it answers "
                       f"{pooled.routes()}, not embeddings (its task is {pooled.task})")
    check_dimensions(pooled, req.dimensions)
    inputs = await tokenize_inputs(pooled, req.texts, req.token_ids, req.add_special_tokens,
                                   req.truncate)
    vectors = await run_pooled(pooled, inputs, model_name)
    assert pooled.embedder.pooling is not None
    tokens = sum(len(ids) for ids in inputs)
    vectors = _finish(vectors, req, pooled.embedder.pooling.normalize)
    return {"id": "embd-" + request_id(), "object": "list", "created": int(time.time()),
            "model": model_name,
            "data": [_vector_doc(v, req, i) for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

