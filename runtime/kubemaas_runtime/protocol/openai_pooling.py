"""vLLM's ``POST /pooling``: a pooling model's row for each input, as vLLM's PoolingResponse
(``{"id": "pool-…", "object": "list", "created", "model", "data": [{"index", "object":
"pooling", "data"}], "usage"}``), ``data`` a list of floats, or base64 (little-endian float32)
with ``encoding_format`` base64.

``task`` ``embed`` (an embedding model: the vector /v1/embeddings answers, with its
``dimensions`` and ``normalize``) or ``classify`` (a classifier: the row /classify answers as
``probs``, with ``use_activation``); without ``task``, the one the model serves. vLLM's
per-token tasks (``token_embed``, ``token_classify``: one row per token, its default where the
model has them) are not served: the pooling engine gives one row per input.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from .openai_embeddings import Pooled, embeddings
from .openai_errors import ApiError, bad_request
from .openai_scores import classify

TASKS = ("embed", "classify")
_PARAMS = {"embed": ("dimensions", "normalize"),
           "classify": ("use_activation", "activation", "softmax")}


def _task(pooled: Pooled, doc: dict[str, Any], model_name: str) -> str:
    served = "embed" if pooled.classifier is None else "classify"
    task = doc.get("task")
    if task is None:
        return served
    if task not in TASKS:
        raise bad_request(f"'task' {task!r} is not served: one row per input is (embed for an "
                          "embedding model, classify for a classifier); per-token outputs "
                          "(token_embed, token_classify) are not", "task")
    if task != served:
        what = "an embedding model" if served == "embed" else "a classifier"
        raise bad_request(f"the model '{model_name}' is {what}: its task is {served}, not "
                          f"{task}", "task")
    return served


def _check_params(doc: dict[str, Any], task: str) -> None:
    """vLLM's rule: a parameter of the other task is refused, not ignored."""
    others = _PARAMS["classify" if task == "embed" else "embed"]
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
    if task == "embed":
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
