"""The process around a pooling model (``--runner pooling``): load the embedding model,
classifier or token classifier, build the pooling engine, open its endpoints
(``/v1/embeddings``, or ``/classify``; ``/score`` and ``/rerank`` for both; a token
classifier ``/pooling`` only) (llm/server.py runs the rest: listening, readiness,
draining)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..errors import StartupError
from ..settings import Settings

log = logging.getLogger("kubemaas.runtime")


def load_pooling(settings: Settings, path: Path, fetch_s: float,
                 overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Blocking: the model (a base model or a classifier) and its ``Embedder``."""
    from .loader import load_pooling_model
    from .longrope import pin
    from .pooling import (
        Embedder,
        Pooling,
        resolve_pooling,
        sentence_transformers_lower_case,
    )

    if settings.enable_lora:
        raise StartupError("LoRA adapters are served with generating models, not with "
                           "--runner pooling")
    t1 = time.perf_counter()
    model = load_pooling_model(path, device=settings.device, dtype=settings.dtype,
                               packed_linear=settings.packed_linear, overrides=overrides)
    pooling = None
    if model.classifier is None:  # vLLM's default for an encoder: its first (CLS) token
        default = Pooling("CLS" if model.encoder else "LAST", True)
        pooling = resolve_pooling(path, settings.pooler_config, default)
    elif settings.pooler_config:
        raise StartupError("--pooler-config is for embedding models; a classifier pools as "
                           "its own head does")
    model.max_position = _max_len(settings, path, model.max_position)
    model.lower_case = sentence_transformers_lower_case(path)
    max_len = model.max_position
    pin(model.model, max_len)  # one set of frequencies, whatever a batch holds
    dense = _dense(path, pooling, model)
    run = _rows(model, pooling, dense)
    embedder = Embedder(run, pooling, model.device, settings.max_num_seqs,
                        max(settings.max_num_batched_tokens, max_len), settings.max_queue_size,
                        model.pad_id)
    t2 = time.perf_counter()
    if settings.warmup:
        embedder.embed_sync([[0] * 4])
    log.info("model loaded", extra={"fields": {
        "path": str(path), "fetch_s": round(fetch_s, 3), "load_s": round(t2 - t1, 3),
        "warmup_s": round(time.perf_counter() - t2, 3), "model_type": model.model_type,
        "dtype": str(model.dtype).replace("torch.", ""), "device": str(model.device),
        "runner": "pooling", "task": model.classifier.task if model.classifier else "embed",
        "max_model_len": max_len}})
    return model, embedder


def _rows(model: Any, pooling: Any, dense: Any) -> Any:
    """How the engine turns a padded batch into the model's rows."""
    from .classify import classifier_rows
    from .pooling import PooledRows
    from .token_classify import TokenRows

    if pooling is not None:
        return PooledRows(model.model, pooling.kind, dense)
    if model.classifier.per_token:
        return TokenRows(model.model)
    return classifier_rows(model.model)


def _dense(path: Path, pooling: Any, model: Any) -> Any:
    """sentence-transformers' Dense modules as one torch module on the model's device (None
    without any); the model's ``hidden_size`` becomes the last one's out_features (the width
    of the vectors served)."""
    if pooling is None or not pooling.dense:
        return None
    import torch

    from .pooling import _json_file
    from .st_dense import load_dense

    layers = []
    for sub in pooling.dense:
        layer = load_dense(path / sub, _json_file(path / sub / "config.json"),
                           model.hidden_size)
        model.hidden_size = layer[0].out_features
        layers.append(layer)
    return torch.nn.Sequential(*layers).to(model.device).eval()


def _max_len(settings: Settings, path: Path, positions: int) -> int:
    """--max-model-len, else the model's: its positions, or less where sentence-transformers'
    ``max_seq_length`` says so (as vLLM derives it)."""
    from .pooling import sentence_transformers_max_len

    trained = sentence_transformers_max_len(path)
    limit, why = (trained, "sentence-transformers' max_seq_length") \
        if trained is not None and trained < positions else (positions, "positions")
    max_len = settings.max_model_len or limit
    if max_len > limit:
        raise StartupError(f"--max-model-len {max_len} is over the model's limit of {limit} "
                           f"({why})")
    return max_len


def open_pooling(api: Any, settings: Settings, model: Any, embedder: Any) -> dict[str, Any]:
    """The endpoints take pooling requests; the ready log's fields."""
    from ..metrics import LLMMetrics
    from ..protocol.openai_embeddings import Pooled

    api.pooled = Pooled(embedder, LLMMetrics(settings.model_name, 0, 0, model.max_position),
                        model.tokenizer, model.max_position, model.vocab_size,
                        model.hidden_size, model.matryoshka, model.classifier,
                        model.lower_case)
    pooling, classifier = embedder.pooling, model.classifier
    if classifier is not None:
        said = {"runner": "pooling", "task": classifier.task, "labels": list(classifier.labels),
                "classify_activation": classifier.classify_activation}
        if not classifier.per_token:  # /score and /rerank's: a token classifier answers neither
            said.update(score_activation=classifier.score_activation,
                        score_activation_from=classifier.score_activation_from)
        return said
    return {"runner": "pooling", "task": "embed", "pooling_type": pooling.kind,
            "normalize": pooling.normalize, "pooling_from": pooling.source,
            "dimensions": model.hidden_size}
