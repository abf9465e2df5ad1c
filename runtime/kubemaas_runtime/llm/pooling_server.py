"""The process around an embedding model (``--runner pooling``): load it, build the pooling
engine, open ``/v1/embeddings`` (llm/server.py runs the rest: listening, readiness, draining)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..errors import StartupError
from ..settings import Settings

log = logging.getLogger("kubemaas.runtime")


def load_pooling(settings: Settings, path: Path, fetch_s: float) -> tuple[Any, Any]:
    """Blocking: the model as a base model and its ``Embedder``."""
    from .loader import load_embedding
    from .pooling import Embedder, resolve_pooling

    if settings.enable_lora:
        raise StartupError("LoRA adapters are served with generating models, not with "
                           "--runner pooling")
    t1 = time.perf_counter()
    model = load_embedding(path, device=settings.device, dtype=settings.dtype,
                           packed_linear=settings.packed_linear)
    pooling = resolve_pooling(path, settings.pooler_config)
    max_len = settings.max_model_len or model.max_position
    if max_len > model.max_position:
        raise StartupError(f"--max-model-len {max_len} is over the model's limit of "
                           f"{model.max_position} positions")
    model.max_position = max_len
    embedder = Embedder(model.model, pooling, model.device, settings.max_num_seqs,
                        max(settings.max_num_batched_tokens, max_len), settings.max_queue_size)
    t2 = time.perf_counter()
    if settings.warmup:
        embedder.embed_sync([[0] * 4])
    log.info("model loaded", extra={"fields": {
        "path": str(path), "fetch_s": round(fetch_s, 3), "load_s": round(t2 - t1, 3),
        "warmup_s": round(time.perf_counter() - t2, 3), "model_type": model.model_type,
        "dtype": str(model.dtype).replace("torch.", ""), "device": str(model.device),
        "runner": "pooling", "max_model_len": max_len}})
    return model, embedder


def open_pooling(api: Any, settings: Settings, model: Any, embedder: Any) -> dict[str, Any]:
    """The endpoints take embedding requests; the ready log's fields."""
    from ..metrics import LLMMetrics
    from ..protocol.openai_embeddings import Pooled

    api.pooled = Pooled(embedder, LLMMetrics(settings.model_name, 0, 0, model.max_position),
                        model.tokenizer, model.max_position, model.vocab_size,
                        model.hidden_size, model.matryoshka)
    pooling = embedder.pooling
    return {"runner": "pooling", "pooling_type": pooling.kind, "normalize": pooling.normalize,
            "pooling_from": pooling.source, "dimensions": model.hidden_size}
