"""CLI: settings -> HTTP server (live at once) -> storage -> backend -> warm-up -> ready.

``python -m kubemaas_runtime --model-uri model.onnx`` (or the KUBEMAAS_* variables). The listener
starts before the model loads, so liveness answers during a long download and readiness turns
200 only when the model is loaded and warmed up. SIGTERM: readiness goes 503, in-flight requests
finish (up to the drain timeout), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import StartupError
from .logs import quiet_teardown, route_torch_logs, setup_logging
from .settings import Settings, guess_format, load_settings

if TYPE_CHECKING:
    from .backends.base import Model
    from .batching import Batcher
    from .dataplane import DataPlane
    from .metrics import Metrics

log = logging.getLogger("kubemaas.runtime")
lifecycle = logging.getLogger("kubemaas.runtime.lifecycle")  # see serving.py


async def serve(settings: Settings) -> int:
    # imports here keep `--help` and settings errors fast
    from .dataplane import DataPlane
    from .metrics import Metrics
    from .protocol.rest import RestServer
    from .security.gate import Security
    from .serving import serve_until_stopped

    started = time.perf_counter()
    metrics = Metrics()
    metrics.model_ready.set((settings.model_name,), 0)
    dataplane = DataPlane(settings.model_name, settings.model_version,
                          settings.request_timeout_s, settings.signature_name)
    rest = RestServer(dataplane, metrics, settings.max_request_bytes,
                      settings.max_inflight_bytes or None, settings.log_requests)
    # handler_cancellation: a client that hangs up cancels its request, which leaves the
    # batcher (and its model call) instead of holding a place for no one
    security = Security(settings, metrics, rest.entry, openai=False,  # keys, TLS, limits
                        handler_cancellation=True)

    def go_ready(model: Model, port: int) -> None:
        _go_ready(settings, model, _batcher(settings, model, metrics), dataplane, metrics, port,
                  started)

    def stop_serving() -> None:
        dataplane.draining = True

    return await serve_until_stopped(settings, metrics, security, lambda: _load(settings),
                                     go_ready, lambda: rest.inflight, stop_serving,
                                     lambda _: dataplane.close(), cut=dataplane.cut)


def _batcher(settings: Settings, model: Model, metrics: Metrics) -> Batcher:
    from .batching import Batcher, padded_batch_rows

    return Batcher(model, model_name=settings.model_name, metrics=metrics,
                   max_batch_size=settings.max_batch_size,
                   max_batch_delay_s=settings.max_batch_delay_ms / 1000.0,
                   max_queue_size=settings.max_queue_size,
                   instances=settings.instances,
                   inline_max_s=settings.inline_max_us / 1e6,
                   pad_to=padded_batch_rows(model, settings.max_batch_size,
                                            settings.pad_batches))


def _go_ready(settings: Settings, model: Model, batcher: Batcher, dataplane: DataPlane,
              metrics: Metrics, port: int, started: float) -> None:
    """Hand the loaded model to the data plane and turn readiness on."""
    dataplane.set_model(model, batcher)
    # what exists now (modules, the model and its session) lives as long as the process:
    # freeze it out of the cyclic collector, so that the full collections that request
    # garbage sets off traverse only what requests made (they paused the loop ~10 ms)
    gc.collect()
    gc.freeze()
    took = time.perf_counter() - started
    label = (settings.model_name,)
    metrics.model_ready.set(label, 1)
    metrics.load_seconds.set(label, took)
    lifecycle.info("ready", extra={"fields": {
        "model": settings.model_name, "version": settings.model_version,
        "platform": model.platform, "device": model.device,
        "batching": batcher.batching, "port": port,
        "seconds_to_ready": round(took, 3)}})


def _load(settings: Settings) -> Model:
    """Blocking: fetch, load and warm the model (runs in a thread)."""
    from .backends import load_model
    from .batching import padded_batch_rows, warm_padded
    from .storage import S3Config, fetch_model

    t0 = time.perf_counter()
    s3 = S3Config.from_env(os.environ, settings.s3_endpoint, settings.s3_credentials_dir)
    path = fetch_model(settings.model_uri, settings.cache_dir, sha256=settings.model_sha256,
                       s3=s3, timeout_s=settings.download_timeout_s)
    t1 = time.perf_counter()
    fmt = settings.model_format or guess_format(path.name)
    if fmt is None:
        raise StartupError(f"cannot tell the format of {path.name}; set --format / "
                           "KUBEMAAS_MODEL_FORMAT")
    model = load_model(path, fmt, device=settings.device,
                       intra_op_threads=settings.intra_op_threads,
                       inter_op_threads=settings.inter_op_threads, tf32=settings.tf32)
    route_torch_logs()  # a torch backend has imported torch by now
    t2 = time.perf_counter()
    if settings.warmup:
        try:
            model.warmup()
            rows = padded_batch_rows(model, settings.max_batch_size, settings.pad_batches)
            if rows is not None:
                warm_padded(model, rows)
        except Exception as exc:  # a model may reject zeros; serving can still work
            log.warning("warm-up failed; serving anyway",
                        extra={"fields": {"error": str(exc).splitlines()[0] if str(exc) else
                                          type(exc).__name__}})
    log.info("model loaded", extra={"fields": {
        "path": str(path), "fetch_s": round(t1 - t0, 3), "load_s": round(t2 - t1, 3),
        "warmup_s": round(time.perf_counter() - t2, 3)}})
    return model


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except StartupError as exc:
        print(f"kubemaas-runtime: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        if settings.model_format == "hf":
            from .llm.server import serve_llm

            return asyncio.run(serve_llm(settings))
        return asyncio.run(serve(settings))
    except StartupError as exc:
        log.error(str(exc))
        return 1


def cli() -> int:
    """The process's entry (``python -m kubemaas_runtime``, ``kubemaas-runtime``)."""
    code = main()
    quiet_teardown()
    if any(t.name.startswith("kubemaas-model") and t.is_alive() for t in threading.enumerate()):
        # a model call that the drain timeout cut still runs: the interpreter would join its
        # thread, holding the pod past its drain timeout (a 24 s call: 31 s after SIGTERM);
        # os._exit flushes nothing, so the last records are flushed first
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(cli())
