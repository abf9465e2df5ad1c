"""The process lifecycle both servers share (tensor models in ``__main__``, language models in
``llm/server.py``): listen before the model loads, load it in a daemon thread, stop on SIGTERM or
SIGINT, drain requests in flight (``serve_until_stopped``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import StartupError
from .settings import Settings

if TYPE_CHECKING:
    from aiohttp import web

    from .metrics import Metrics
    from .security.gate import Security

T = TypeVar("T")

log = logging.getLogger("kubemaas.runtime")
# lifecycle lines (listening, ready, draining, stopped) are logged whatever --log-level says:
# probes, benchmarks and people wait for them
lifecycle = logging.getLogger("kubemaas.runtime.lifecycle")

CUT_GRACE_S = 2.0  # past the drain timeout: for the requests cut to send their ending
HANDLER_GRACE_S = 1.0  # then: for a handler still running before aiohttp cancels it


async def listen(settings: Settings, security: Security) -> tuple[web.ServerRunner, int]:
    """Start the listener (TLS when configured) and the security gate's reloads; return the
    runner and the port it bound."""
    from aiohttp import web

    # past the drain, a handler still running (its client reads nothing, so its write waits)
    # is cancelled after HANDLER_GRACE_S: aiohttp's default, 60 s, outlived a pod's grace
    runner = web.ServerRunner(security.server, handle_signals=False,
                              shutdown_timeout=HANDLER_GRACE_S)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True, backlog=1024,
                       ssl_context=security.ssl_context)
    try:
        await site.start()
        await security.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: "
                           f"{exc.strerror or exc}") from None
    port = runner.addresses[0][1] if runner.addresses else settings.port
    lifecycle.info("listening", extra={"fields": {"host": settings.host, "port": port}})
    return runner, port


def stop_on_signals(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run_in_thread(work: Callable[[], T], loop: asyncio.AbstractEventLoop) -> asyncio.Future[T]:
    """Run ``work`` in a daemon thread: a SIGTERM during a long download must not wait for it
    (the default executor would be joined at exit)."""
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as exc:  # delivered to the event loop, which decides
            error = exc
        with contextlib.suppress(RuntimeError):  # a closed loop: the process is exiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="kubemaas-load", daemon=True).start()
    return fut


async def drain(settings: Settings, inflight: Callable[[], int], serving: bool,
                cut: Callable[[], None] | None = None) -> None:
    """After readiness went 503: keep serving for --shutdown-delay-s (when a model was serving),
    then wait up to --drain-timeout-s for the requests in flight; past it, ``cut`` ends them
    (each answered with a 503 or, on a stream, an error event) and they get CUT_GRACE_S more
    to send that."""
    if settings.shutdown_delay_s and serving:
        await asyncio.sleep(settings.shutdown_delay_s)  # readiness 503, still serving
    if not await _settle(inflight, settings.drain_timeout_s):
        log.warning("drain timeout; exiting with requests in flight",
                    extra={"fields": {"inflight": inflight()}})
        if cut is not None:
            cut()
            await _settle(inflight, CUT_GRACE_S)


async def _settle(inflight: Callable[[], int], timeout_s: float) -> bool:
    """Whether the requests in flight all ended within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while inflight() > 0 and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return inflight() == 0


async def serve_until_stopped(settings: Settings, metrics: Metrics, security: Security,
                              load: Callable[[], T], go_ready: Callable[[T, int], None],
                              inflight: Callable[[], int], stop_serving: Callable[[], None],
                              close: Callable[[T | None], None],
                              cut: Callable[[], None] | None = None) -> int:
    """Listen, load the model in a thread (``load``; a stop signal meanwhile ends the wait),
    serve it (``go_ready`` with what loaded and the bound port) until SIGTERM or SIGINT, then
    turn readiness off (``stop_serving``), drain the requests in flight and ``close`` what
    loaded (None when nothing did). The exit code: 1 when the model could not load."""
    loop = asyncio.get_running_loop()
    runner, port = await listen(settings, security)
    stop = stop_on_signals(loop)
    loaded: T | None = None
    exit_code = 0
    load_task = run_in_thread(load, loop)
    stop_task = asyncio.ensure_future(stop.wait())
    try:
        pending: set[asyncio.Future[Any]] = {load_task, stop_task}
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if load_task.done():
            loaded = load_task.result()  # raises StartupError
            go_ready(loaded, port)
            await stop_task
        else:
            load_task.cancel()
        lifecycle.info("draining", extra={"fields": {"inflight": inflight()}})
        stop_serving()
        metrics.model_ready.set((settings.model_name,), 0)
        await drain(settings, inflight, serving=loaded is not None, cut=cut)
    except StartupError as exc:
        log.error(str(exc))
        exit_code = 1
    finally:
        stop_task.cancel()
        await security.close()
        await runner.cleanup()
        close(loaded)
    lifecycle.info("stopped", extra={"fields": {"exit_code": exit_code}})
    return exit_code
