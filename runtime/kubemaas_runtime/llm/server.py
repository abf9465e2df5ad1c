"""The process around the engine for ``--format hf``: listen at once, fetch and load the model
directory in a thread, size the KV cache, start the engine thread, report ready; on SIGTERM,
readiness goes 503, requests in flight finish (up to the drain timeout), then exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import StartupError
from ..settings import Settings

log = logging.getLogger("kubemaas.runtime")
lifecycle = logging.getLogger("kubemaas.runtime.lifecycle")

CPU_KV_DEFAULT = 256 << 20


def kv_budget(settings: Settings, lm: Any) -> int:
    """Bytes for the KV cache: the flag, or on CUDA a share of the GPU memory left."""
    if settings.kv_cache_memory:
        return settings.kv_cache_memory
    if lm.device.type != "cuda":
        return CPU_KV_DEFAULT
    import torch

    free, total = torch.cuda.mem_get_info(lm.device)
    used_elsewhere = total - free
    budget = int(total * settings.gpu_memory_utilization) - used_elsewhere
    if budget <= 0:
        raise StartupError(f"--gpu-memory-utilization {settings.gpu_memory_utilization} leaves "
                           f"no room for the KV cache ({used_elsewhere >> 20} MiB are in use)")
    return budget


def _fetcher(settings: Settings) -> Callable[[str], Path]:
    """A model's or an adapter's URI -> its local directory (blocking; the model cache)."""
    from ..storage import S3Config
    from ..storage_dir import fetch_model_dir

    s3 = S3Config.from_env(os.environ, settings.s3_endpoint, settings.s3_credentials_dir)
    return lambda uri: Path(fetch_model_dir(uri, settings.cache_dir, s3=s3,
                                            timeout_s=settings.download_timeout_s))


def _lora_set(settings: Settings, lm: Any) -> Any:
    """The LoRA layers and the adapters of --lora-modules."""
    from .lora import AdapterError, LoraSet, read_adapter

    loras = LoraSet(lm.model, settings.max_loras, settings.max_lora_rank)
    fetch = _fetcher(settings)
    for name, uri in settings.lora_modules:
        try:
            loras.add(read_adapter(loras, name, uri, fetch))
        except AdapterError as exc:
            raise StartupError(f"LoRA adapter '{name}' ({uri}): {exc}") from None
    return loras


def _engine(settings: Settings, lm: Any, max_len: int) -> Any:
    """The engine for ``lm`` as the settings configure it."""
    from .engine import Engine, EngineConfig

    try:
        return Engine(lm, EngineConfig(
            kv_cache_bytes=kv_budget(settings, lm), max_model_len=max_len,
            max_num_seqs=settings.max_num_seqs,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            block_size=settings.block_size, max_queue=settings.max_queue_size,
            prefix_caching=settings.prefix_caching, prefill_share=settings.prefill_share,
            arrival_window=settings.arrival_window_ms / 1e3,
            traced_decode=settings.traced_decode, decode_lanes=settings.decode_lanes,
            scheduling_policy=settings.scheduling_policy,
            kv_groups=settings.hybrid_kv_cache))
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def _warm(engine: Any, max_num_seqs: int, max_len: int) -> None:
    """Before serving: CUDA graphs of every decode bucket, and two short generations (which
    trace the CPU graphs); the warm-up is not counted as served work."""
    if engine.graphed is not None:
        width = engine.pool.blocks_for(max_len)
        if engine.scheduler.window is not None:  # decode tables span the window alone
            width = min(width, engine.scheduler.live_blocks)
        engine.graphed.warm(max_num_seqs, width)
    engine.warm()
    engine.reset_stats()


def _load(settings: Settings) -> tuple[Any, Any]:
    """Blocking: fetch the directory, load the model, build the engine (runs in a thread)."""
    from ..logs import route_torch_logs
    from .chat_template import read_chat_template, use_chat_template
    from .loader import load_hf, parse_overrides, pooling_runner

    route_torch_logs()  # before transformers imports its quantizers (they log through torch)
    t0 = time.perf_counter()
    path = _fetcher(settings)(settings.model_uri)
    t1 = time.perf_counter()
    if settings.intra_op_threads:
        import torch

        torch.set_num_threads(settings.intra_op_threads)
    overrides = parse_overrides(settings.hf_overrides)
    if settings.runner == "pooling" or (settings.runner == "auto" and
                                        pooling_runner(path, overrides)):
        from .pooling_server import load_pooling

        return load_pooling(settings, path, t1 - t0, overrides)
    lm = load_hf(path, device=settings.device, dtype=settings.dtype,
                 packed_linear=settings.packed_linear, overrides=overrides)
    template = read_chat_template(settings.chat_template, path)
    if template is not None:
        use_chat_template(lm, template, repr(settings.chat_template)[:80])
    if settings.enable_lora:
        lm.loras = _lora_set(settings, lm)
    t2 = time.perf_counter()
    max_len = settings.max_model_len or lm.max_position
    if max_len > lm.max_position:
        raise StartupError(f"--max-model-len {max_len} is over the model's limit of "
                           f"{lm.max_position} positions")
    engine = _engine(settings, lm, max_len)
    if settings.warmup:
        _warm(engine, settings.max_num_seqs, max_len)
    log.info("model loaded", extra={"fields": {
        "path": str(path), "fetch_s": round(t1 - t0, 3), "load_s": round(t2 - t1, 3),
        "warmup_s": round(time.perf_counter() - t2, 3), "model_type": lm.model_type,
        "dtype": str(lm.dtype).replace("torch.", ""), "device": str(lm.device),
        "kv_blocks": engine.pool.usable, "block_size": engine.pool.block_size,
        # with --hybrid-kv-cache, the windowed layers' group's (kv_blocks: the full layers')
        "kv_window_blocks": engine.window_pool.usable if engine.window_pool else 0,
        "max_model_len": max_len,
        # the most bytes the decode rows' second copy may take (decode_lanes.py); 0: none
        "decode_lanes_max_bytes": engine.lanes.max_bytes if engine.lanes is not None else 0}})
    return lm, engine


def _open(api: Any, settings: Settings, lm: Any, engine: Any) -> dict[str, Any]:
    """The endpoints take requests for the loaded model: its engine, metrics and tokenizer,
    and the parsers its chat template calls for; the ready log's fields."""
    from ..metrics import LLMMetrics
    from ..protocol.openai_engine import Served
    from ..protocol.openai_reasoning import resolve_reasoning_parser, think_token_ids
    from ..protocol.openai_tools import resolve_parser

    api.tool_call_parser = resolve_parser(settings.tool_call_parser, lm.chat_template)
    api.reasoning_parser = resolve_reasoning_parser(settings.reasoning_parser, lm.chat_template)
    api.served = Served(engine, LLMMetrics(settings.model_name, engine.pool.block_size,
                                           engine.pool.usable, engine.cfg.max_model_len),
                        lm.tokenizer, engine.cfg.max_model_len, lm.vocab_size)
    if lm.loras is not None:
        api.served.loras = lm.loras
        if settings.allow_runtime_lora_updating:
            api.served.fetch_adapter = _fetcher(settings)
            api.lora_updating = True
    if api.reasoning_parser != "none":
        api.served.think_ids = think_token_ids(lm.tokenizer)
    return {"chat_template": "--chat-template" if settings.chat_template else "tokenizer",
            "tool_call_parser": api.tool_call_parser, "reasoning_parser": api.reasoning_parser,
            # a structured output's grammar holds the answer after the reasoning
            "grammar_after_thinking": bool(api.served.think_ids),
            "lora_adapters": sorted(lm.loras.by_name) if lm.loras else None}


def _api(settings: Settings, metrics: Any) -> Any:
    """The OpenAI endpoints, before a model is loaded."""
    from ..protocol.openai import OpenAIServer
    from ..protocol.openai_lora import shown_uri

    return OpenAIServer(settings.model_name, metrics, min(settings.max_request_bytes, 16 << 20),
                        log_requests=settings.log_requests,
                        tokens_as_ids=settings.return_tokens_as_token_ids,
                        max_inflight_bytes=settings.max_inflight_bytes,
                        model_root=shown_uri(settings.model_uri))


async def serve_llm(settings: Settings) -> int:
    from ..metrics import Metrics
    from ..security.gate import Security
    from ..serving import serve_until_stopped

    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    label = (settings.model_name,)
    metrics.model_ready.set(label, 0)
    api = _api(settings, metrics)
    security = Security(settings, metrics, api.handle, openai=True, handler_cancellation=True)

    stats: list[asyncio.Task[None]] = []  # the periodic stats record's task

    def go_ready(loaded: tuple[Any, Any], port: int) -> None:
        lm, engine = loaded
        engine.start(loop)
        from .pooling import Embedder
        from .pooling_server import open_pooling
        from .stats_log import log_stats

        pooling = isinstance(engine, Embedder)
        fields = open_pooling(api, settings, lm, engine) if pooling else \
            _open(api, settings, lm, engine)
        if not pooling and settings.log_stats_interval_s > 0:
            stats.append(loop.create_task(log_stats(engine, settings.log_stats_interval_s)))
        gc.collect()
        gc.freeze()
        took = time.perf_counter() - started
        metrics.model_ready.set(label, 1)
        metrics.load_seconds.set(label, took)
        lifecycle.info("ready", extra={"fields": {
            "model": settings.model_name, "platform": "transformers",
            "device": str(lm.device), "port": port, "seconds_to_ready": round(took, 3),
            **fields}})

    def stop_serving() -> None:
        # readiness 503 at once; the requests a Service still sends during --shutdown-delay-s
        # are served (as the v2 server's are), new ones refused once it ends
        api.unready = True
        loop.call_later(settings.shutdown_delay_s, refuse_new)

    def refuse_new() -> None:
        api.draining = True

    def close(loaded: tuple[Any, Any] | None) -> None:
        for task in stats:
            task.cancel()
        if loaded is not None:
            loaded[1].stop()  # the engine

    return await serve_until_stopped(settings, metrics, security, lambda: _load(settings),
                                     go_ready, lambda: api.inflight, stop_serving, close,
                                     cut=api.cut)
