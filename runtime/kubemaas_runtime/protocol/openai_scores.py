"""vLLM's pooling endpoints beside embeddings, answered as vLLM answers them:

* ``POST /classify`` (a classifier): ``input`` as for embeddings (or a chat's ``messages``);
  each input's ``label`` (id2label of the best class), ``probs`` and ``num_classes``.
* ``POST /score`` (``/v1/score``): ``text_1`` and ``text_2`` (or vLLM's other names for them:
  ``queries`` and ``documents`` or ``items``, ``data_1`` and ``data_2``), a string or a list
  each, paired 1:1, 1:N or N:N; each pair's ``score``.
* ``POST /rerank`` (``/v1/rerank``, ``/v2/rerank``: Jina's and Cohere's shape): a ``query`` and
  its ``documents``; the results by relevance, highest first, ``top_n`` of them (0: all).

A score comes from a cross-encoder (a classifier of one label: the two texts as one pair of
the tokenizer's, with their token types, through the model, then the activation) or from an
embedding model (each text's vector; the pair's score their cosine similarity). Usage counts
the tokens the model ran (with 1:N the first text's once).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..llm.classify import activate
from .openai_embeddings import (
    MAX_INPUTS,
    Pooled,
    check_length,
    check_model,
    optional,
    parse_common,
    parse_inputs,
    run_pooled,
    tokenize_inputs,
    truncation,
)
from .openai_errors import ApiError, bad_request
from .openai_request_id import request_id
from .openai_tokens import TOKENIZE_OFF_LOOP_CHARS

SCORE_ROUTES = ("/score", "/v1/score")
RERANK_ROUTES = ("/rerank", "/v1/rerank", "/v2/rerank")
CLASSIFY_ROUTES = ("/classify",)


def use_activation(doc: dict[str, Any]) -> bool:
    """vLLM's ``use_activation`` (its older names ``activation`` and ``softmax``)."""
    for key in ("use_activation", "activation", "softmax"):
        value = optional(doc, key, bool)
        if value is not None:
            return bool(value)
    return True


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


async def classify(pooled: Pooled, doc: Any, model_name: str,
                   chat_ids: list[int] | None = None) -> dict[str, Any]:
    texts, ids = parse_inputs(doc, pooled.vocab_size, chat_ids)
    model, truncate = parse_common(doc)
    check_model(model, model_name)
    activation = use_activation(doc)
    special = optional(doc, "add_special_tokens", bool, chat_ids is None)
    classifier = pooled.classifier
    if classifier is None or classifier.per_token:
        raise ApiError(400, f"the model '{model_name}' is {pooled.kind()} (task "
                       f"{pooled.task}): it answers {pooled.routes()}; /classify needs a "
                       "classifier (a *ForSequenceClassification model)")
    inputs = await tokenize_inputs(pooled, texts, ids, special, truncate)
    logits = torch.stack(await run_pooled(pooled, inputs, model_name))
    probs = activate(logits, classifier.classify_activation) if activation else logits
    best = logits.argmax(-1).tolist()
    data = [{"index": i, "label": classifier.labels[best[i]], "probs": row,
             "num_classes": classifier.num_labels} for i, row in enumerate(probs.tolist())]
    tokens = sum(map(len, inputs))
    return {"id": "classify-" + request_id(), "object": "list",
            "created": int(time.time()), "model": model_name, "data": data,
            "usage": _usage(tokens)}


@dataclass(frozen=True)
class ScoreRequest:
    model: str | None
    first: list[str]
    second: list[str]
    truncate: int | None
    use_activation: bool
    fields: tuple[str, str] = ("text_1", "text_2")  # the two sides' names in the request

    def label(self, i: int) -> tuple[str, str]:
        """How an error names text ``i`` of ``first + second``, and its field."""
        first, second = self.fields
        if i < len(self.first):
            return (first if len(self.first) == 1 else f"{first}[{i}]"), first
        return f"{second}[{i - len(self.first)}]", second


def _texts(value: Any, name: str, allow_objects: bool = False) -> list[str]:
    """A string or a list of them (for rerank's documents also Cohere's ``{"text": ...}``)."""
    items = [value] if isinstance(value, str) else value
    if allow_objects and isinstance(items, list):
        items = [v["text"] if isinstance(v, dict) and isinstance(v.get("text"), str) else v
                 for v in items]
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise bad_request(f"'{name}' must be a string or a list of strings", name)
    if not items:
        raise bad_request(f"'{name}' must hold at least one text", name)
    if len(items) > MAX_INPUTS:
        raise bad_request(f"'{name}' holds more than {MAX_INPUTS} texts", name)
    return list(items)


def parse_score(doc: Any, first: str, second: str) -> ScoreRequest:
    """``first``/``second``: the fields of the two sides (text_1/text_2, query/documents)."""
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if first == "query" and not isinstance(doc.get("query"), str):
        raise bad_request("'query' must be a string", "query")
    one = _texts(doc.get(first), first)
    two = _texts(doc.get(second), second, allow_objects=second == "documents")
    if len(one) > 1 and len(one) != len(two):
        raise bad_request(f"'{first}' and '{second}' pair 1:1, 1:N or N:N; got "
                          f"{len(one)}:{len(two)}", first)
    model, truncate = parse_common(doc)
    return ScoreRequest(model, one, two, truncate, use_activation(doc), (first, second))


async def _pair_ids(pooled: Pooled, req: ScoreRequest, tokenizer_pairs: bool
                    ) -> tuple[list[list[int]], list[list[int]] | None]:
    """Each pair as the tokenizer joins two texts (``[CLS] a [SEP] b [SEP]``, ``<s> a </s></s>
    b </s>``, ...) and its token types when the tokenizer makes them; or, for a language model
    used as a reranker (not ``tokenizer_pairs``), the two texts concatenated, as vLLM does."""
    firsts = req.first * len(req.second) if len(req.first) == 1 else req.first
    seconds = req.second
    if pooled.lower_case:  # sentence-transformers' do_lower_case
        firsts, seconds = [t.lower() for t in firsts], [t.lower() for t in seconds]
    tokenizer = pooled.tokenizer
    truncate = truncation(pooled, req.truncate)
    extra: dict[str, Any] = {"truncation": True, "max_length": truncate} \
        if truncate is not None else {}
    specials = tokenizer.num_special_tokens_to_add(pair=tokenizer_pairs)
    if truncate is not None and truncate <= specials:  # the tokenizer would keep only them,
        raise bad_request(  # or (below them) not cut at all
            f"'truncate_prompt_tokens' ({truncate}) leaves no room for the texts: this "
            f"model's pair takes {specials} special tokens, so it must be at least "
            f"{specials + 1}", "truncate_prompt_tokens")

    def encode() -> Any:
        if not tokenizer_pairs:
            return tokenizer([a + b for a, b in zip(firsts, seconds, strict=True)],
                             add_special_tokens=True, **extra)
        return tokenizer(firsts, text_pair=seconds, add_special_tokens=True, **extra)

    chars = sum(map(len, firsts)) + sum(map(len, seconds))
    out = await asyncio.get_running_loop().run_in_executor(None, encode) \
        if chars > TOKENIZE_OFF_LOOP_CHARS else encode()
    ids = [list(row) for row in out["input_ids"]]
    for i, row in enumerate(ids):
        one = req.label(i if len(req.first) > 1 else 0)[0]
        check_length(pooled, len(row), f"pair {i} ({one} with "
                     f"{req.label(len(req.first) + i)[0]})", req.fields[1])
    types = out.get("token_type_ids")
    return ids, [list(row) for row in types] if types is not None else None


async def _cross_scores(pooled: Pooled, req: ScoreRequest, model_name: str
                        ) -> tuple[list[float], int]:
    classifier = pooled.classifier
    assert classifier is not None
    if classifier.num_labels != 1:
        raise ApiError(400, f"scores come from a cross-encoder of one label; the model "
                       f"'{model_name}' classifies into {classifier.num_labels} labels: use "
                       "/classify")
    ids, types = await _pair_ids(pooled, req, classifier.tokenizer_pairs)
    logits = torch.stack(await run_pooled(pooled, ids, model_name, types))
    if req.use_activation:
        logits = activate(logits, classifier.score_activation)
    return logits[:, 0].tolist(), sum(map(len, ids))


async def _embedding_scores(pooled: Pooled, req: ScoreRequest, model_name: str
                            ) -> tuple[list[float], int]:
    inputs = await tokenize_inputs(pooled, req.first + req.second, None, True, req.truncate,
                                   req.label)
    vectors = torch.stack(await run_pooled(pooled, inputs, model_name))
    one, two = vectors[:len(req.first)], vectors[len(req.first):]
    scores = torch.nn.functional.cosine_similarity(one.expand_as(two), two, dim=-1)
    return scores.tolist(), sum(map(len, inputs))


async def scores_of(pooled: Pooled, req: ScoreRequest, model_name: str
                    ) -> tuple[list[float], int]:
    """Each pair's score, and the tokens the model ran."""
    check_model(req.model, model_name)
    if pooled.task == "token_classify":
        raise ApiError(400, f"the model '{model_name}' is a token classifier (task "
                       f"token_classify): it answers {pooled.routes()}; scores come from a "
                       "cross-encoder or an embedding model")
    if pooled.classifier is not None:
        return await _cross_scores(pooled, req, model_name)
    return await _embedding_scores(pooled, req, model_name)


def score_fields(doc: Any) -> tuple[str, str]:
    """The two sides' field names, as vLLM's score request takes them: ``text_1``/``text_2``,
    ``queries`` with ``documents`` or ``items``, or ``data_1``/``data_2``."""
    if not isinstance(doc, dict) or "text_1" in doc or "text_2" in doc:
        return "text_1", "text_2"
    if "queries" in doc:
        return "queries", "items" if "items" in doc and "documents" not in doc else "documents"
    if "data_1" in doc or "data_2" in doc:
        return "data_1", "data_2"
    return "text_1", "text_2"


async def score(pooled: Pooled, doc: Any, model_name: str) -> dict[str, Any]:
    req = parse_score(doc, *score_fields(doc))
    values, tokens = await scores_of(pooled, req, model_name)
    return {"id": "score-" + request_id(), "object": "list", "created": int(time.time()),
            "model": model_name,
            "data": [{"index": i, "object": "score", "score": v} for i, v in enumerate(values)],
            "usage": _usage(tokens)}


async def rerank(pooled: Pooled, doc: Any, model_name: str) -> dict[str, Any]:
    req = parse_score(doc, "query", "documents")
    top_n = optional(doc, "top_n", int, 0)
    if top_n < 0:
        raise bad_request("'top_n' must be 0 (all) or more", "top_n")
    documents = optional(doc, "return_documents", bool, True)
    values, tokens = await scores_of(pooled, req, model_name)
    order = sorted(range(len(values)), key=lambda i: -values[i])  # stable: ties keep order
    results = []
    for i in order[:top_n or None]:
        result: dict[str, Any] = {"index": i, "relevance_score": values[i]}
        if documents:
            result["document"] = {"text": req.second[i]}
        results.append(result)
    return {"id": "rerank-" + request_id(), "model": model_name, "usage": _usage(tokens),
            "results": results}
