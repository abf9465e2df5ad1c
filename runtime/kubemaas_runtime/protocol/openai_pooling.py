"""vLLM's ``POST /pooling``: a pooling model's row for each input, as vLLM's PoolingResponse
(``{"id": "pool-…", "object": "list", "created", "model", "data": [{"index", "object":
"pooling", "data"}], "usage"}``), ``data`` a list of floats, or base64 (little-endian float32)
with ``encoding_format`` base64.

``task`` ``embed`` (an embedding model: the vector /v1/embeddings answers, with its
``dimensions`` and ``normalize``), ``classify`` (a classifier: the row /classify answers as
``probs``, with ``use_activation``) or ``token_embed`` (an embedding model: each token's
hidden state, through any Dense modules, cut to ``dimensions`` and normalized each, as vLLM's
TokenEmbeddingPoolerHead; ``data`` a list of per-token vectors, or base64 of them all, row
after row); without ``task``, the one per input the model serves (vLLM's default is its
per-token task: kept out on purpose, /pooling here answers what the model is served for).
``token_classify`` (a token classifier, ``*ForTokenClassification``, llm/token_classify.py,
and its task without ``task``): ``data`` a list of one row per token the model read (special
tokens included), its labels' probabilities by the classifier's activation (``use_activation``
false: the logits), as vLLM's TokenClassifierPoolerHead; base64: all the rows' float32
values, row after row.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
import torch

from ..llm.classify import activate
from .openai_embeddings import (
    Pooled,
    check_dimensions,
    check_model,
    embeddings,
    parse_embedding,
    run_pooled,
    tokenize_inputs,
)
from .openai_errors import ApiError, bad_request
from .openai_request_id import request_id
from .openai_scores import classify, use_activation

TASKS = ("embed", "classify", "token_embed", "token_classify")
_PARAMS = {"embed": ("dimensions", "normalize"),
           "classify": ("use_activation", "activation", "softmax")}
_PARAMS["token_embed"] = _PARAMS["embed"]
_PARAMS["token_classify"] = _PARAMS["classify"]


def _task(pooled: Pooled, doc: dict[str, Any], model_name: str) -> str:
    served = pooled.task
    task = doc.get("task")
    if task is None:
        return served
    if task not in TASKS:
        raise bad_request(f"'task' {task!r} is not one of {', '.join(TASKS)}", "task")
    if task == "token_embed" and served == "embed" and pooled.embedder.per_token:
        return "token_embed"
    if task != served:
        needs = " (task token_classify needs a *ForTokenClassification model)" \
            if task == "token_classify" else ""
        raise bad_request(f"the model '{model_name}' is {pooled.kind()}: its task is "
                          f"{served}, not {task}{needs}", "task")
    return served


def _check_params(doc: dict[str, Any], task: str) -> None:
    """vLLM's rule: a parameter of the other task is refused, not ignored."""
    others = _PARAMS["classify" if task.endswith("embed") else "embed"]
    for key in others:
        if doc.get(key) is not None:
            raise bad_request(f"task {task} does not take '{key}' (it takes "
                              f"{', '.join(_PARAMS[task])})", key)


async def pooling(pooled: Pooled, doc: Any, model_name: str,
                  chat_ids: list[int] | None = None) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
    task = _task(pooled, doc, model_name)
    _check_params(doc, task)
    fmt = doc.get("encoding_format", "float")
    if fmt not in ("float", "base64", None):
        raise bad_request("'encoding_format' must be float or base64", "encoding_format")
    if task in ("token_embed", "token_classify"):
        per_token = token_embeddings if task == "token_embed" else token_classes
        answer = await per_token(pooled, doc, model_name, chat_ids)
        rows = answer["data"]
    elif task == "embed":
        answer = await embeddings(pooled, doc, model_name, chat_ids)
        rows = [item["embedding"] for item in answer["data"]]
    else:
        answer = await classify(pooled, doc, model_name, chat_ids)
        rows = [item["probs"] for item in answer["data"]]
        if fmt == "base64":
            rows = [base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode()
                    for row in rows]
    return {"id": "pool-" + answer["id"].split("-", 1)[1], "object": "list",
            "created": answer["created"], "model": answer["model"],
            "data": [{"index": i, "object": "pooling", "data": row}
                     for i, row in enumerate(rows)],
            "usage": answer["usage"]}


async def token_embeddings(pooled: Pooled, doc: dict[str, Any], model_name: str,
                           chat_ids: list[int] | None) -> dict[str, Any]:
    """vLLM's ``token_embed``: each input's tokens' hidden states, in order (through any Dense
    modules), cut to ``dimensions`` and normalized per token as the model's pooling (or
    ``normalize``) says; one forward, batched with the other inputs waiting."""
    req = parse_embedding(doc, pooled.vocab_size, chat_ids)
    check_model(req.model, model_name)
    check_dimensions(pooled, req.dimensions)
    inputs = await tokenize_inputs(pooled, req.texts, req.token_ids, req.add_special_tokens,
                                   req.truncate)
    states = await run_pooled(pooled, inputs, model_name, per_token=True)
    assert pooled.embedder.pooling is not None
    normalize = pooled.embedder.pooling.normalize if req.normalize is None else req.normalize
    rows: list[Any] = []
    for tokens in states:
        if req.dimensions is not None:
            tokens = tokens[:, :req.dimensions]
        if normalize:
            tokens = torch.nn.functional.normalize(tokens, dim=-1)
        values = tokens.numpy().astype("<f4")
        rows.append(base64.b64encode(values.tobytes()).decode() if req.base64
                    else values.tolist())
    used = sum(map(len, inputs))
    return {"id": "embd-" + request_id(), "created": int(time.time()), "model": model_name,
            "data": rows, "usage": {"prompt_tokens": used, "total_tokens": used}}


async def token_classes(pooled: Pooled, doc: dict[str, Any], model_name: str,
                        chat_ids: list[int] | None) -> dict[str, Any]:
    """vLLM's ``token_classify``: each input's tokens' rows of label probabilities (the
    classifier's activation; ``use_activation`` false: the logits), in order; one forward,
    batched with the other inputs waiting."""
    req = parse_embedding(doc, pooled.vocab_size, chat_ids)
    check_model(req.model, model_name)
    classifier = pooled.classifier
    assert classifier is not None and classifier.per_token
    activation = use_activation(doc)
    inputs = await tokenize_inputs(pooled, req.texts, req.token_ids, req.add_special_tokens,
                                   req.truncate)
    logits = await run_pooled(pooled, inputs, model_name, per_token=True)
    rows: list[Any] = []
    for tokens in logits:
        if activation:
            tokens = activate(tokens, classifier.classify_activation)
        values = tokens.numpy().astype("<f4")
        rows.append(base64.b64encode(values.tobytes()).decode() if req.base64
                    else values.tolist())
    used = sum(map(len, inputs))
    return {"id": "pool-" + request_id(), "created": int(time.time()), "model": model_name,
            "data": rows, "usage": {"prompt_tokens": used, "total_tokens": used}}
