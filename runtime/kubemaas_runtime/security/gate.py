"""The gate in front of both protocol servers: API key check, per-key rate limits, connection
limits; what passes reaches the protocol handler unchanged.

Open without a key: the kubelet's probes (``/v2/health/live``, ``/v2/health/ready``, ``/health``).
``/metrics`` needs a key on the serving port when keys are on (unless ``--metrics-without-key``:
GET and HEAD are then open there too), and is never rate limited; ``--metrics-port`` serves it
alone, without a key, on a port of its own (for Prometheus, which a NetworkPolicy then limits to the
monitoring namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import RuntimeErrorBase
from ..logs import request_context
from ..metrics import Counter, Gauge, Metrics
from ..protocol.request_log import HEADER as REQUEST_ID
from ..protocol.request_log import valid_id
from ..settings import Settings
from .auth import KeyStore, presented_key
from .connection import HardenedHandler, HardenedServer
from .cors import CorsPolicy, request_factory
from .ratelimit import Limits, RateLimiter, Refusal
from .tls import TLSFiles
from .usage import UsageSink, current_usage

log = logging.getLogger("kubemaas.runtime.security")
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/health"})
# never rate limited (a key is still needed for /metrics): Prometheus' scrapes and the probes
# would eat a key's request budget and, refused with 429, leave gaps in the metrics
UNMETERED_PATHS = OPEN_PATHS | {"/metrics"}
RELOAD_EVERY_S = 1.0
ANONYMOUS = "_anonymous"
# a request body must keep arriving at this average rate, checked every --idle-timeout-s: a body
# sent a byte at a time (slow POST) cannot hold a connection and a handler forever
BODY_MIN_BYTES_PER_S = 1024


class BodyTimeout(RuntimeErrorBase):
    """The request body arrived too slowly (HTTP 408); the connection is closed."""

    status = 408
    close_connection = True


class SecurityMetrics:
    def __init__(self) -> None:
        self.auth = Counter(
            "kubemaas_auth_requests_total",
            "Requests by the API key that authenticated them (key = the key file's name), and "
            "refused ones by reason (key=\"\", outcome missing or invalid).",
            ("key", "outcome"))
        self.limited = Counter(
            "kubemaas_rate_limited_total",
            "Requests refused with 429 by a per-key rate limit (limit = requests or tokens).",
            ("key", "limit"))
        self.tokens = Counter(
            "kubemaas_key_tokens_total",
            "Prompt + completion tokens generated per API key (language models).", ("key",))
        self.limit_rps = Gauge(
            "kubemaas_rate_limit_requests_per_second",
            "Requests-per-second limit of each key (0 = none).", ("key",))
        self.limit_tpm = Gauge(
            "kubemaas_rate_limit_tokens_per_minute",
            "Tokens-per-minute limit of each key (0 = none).", ("key",))
        self.keys_loaded = Gauge("kubemaas_api_keys_loaded", "API keys loaded now.")
        self.closed = Counter(
            "kubemaas_connections_closed_total",
            "Connections the server closed on a client too slow: reason = header_timeout "
            "(headers not complete in --header-timeout-s) or body_timeout (body under 1 KiB/s).",
            ("reason",))
        self.reloads = Counter(
            "kubemaas_secret_reloads_total",
            "Reloads of a mounted Secret (secret = api_keys or tls) by outcome.",
            ("secret", "outcome"))

    def lines(self) -> list[str]:
        out: list[str] = []
        for metric in (self.auth, self.limited, self.tokens, self.limit_rps, self.limit_tpm,
                       self.keys_loaded, self.closed, self.reloads):
            out.extend(metric.render())
        return out


def _oip_error(status: int, message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _openai_error(status: int, message: str, code: str | None) -> bytes:
    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": code}}).encode()


def malformed_body(openai: bool) -> Callable[[int, str], bytes]:
    """The error body of a request aiohttp could not parse, in the protocol's shape."""
    if openai:
        return lambda status, message: _openai_error(status, message, None)
    return _oip_error


class Gate:
    def __init__(self, handler: Handler, keys: KeyStore | None, limiter: RateLimiter | None,
                 openai: bool, metrics: SecurityMetrics, body_window_s: float = 30.0,
                 cors: CorsPolicy | None = None, metrics_without_key: bool = False) -> None:
        self.handler = handler
        # GET /metrics admitted like a probe (--metrics-without-key)
        self.open_paths = OPEN_PATHS | ({"/metrics"} if metrics_without_key else frozenset())
        self.cors = cors
        self.body_window_s = body_window_s
        self.keys = keys
        self.limiter = limiter
        self.openai = openai
        self.metrics = metrics

    def _refuse(self, request: web.BaseRequest, status: int, message: str, code: str,
                retry_after: int | None = None, invalid_key: bool = False) -> web.Response:
        # every route of the OpenAI server (/v1/..., /tokenize, /rerank, ...) in its shape
        body = _openai_error(status, message, code) if self.openai else \
            _oip_error(status, message)
        resp = web.Response(body=body, status=status, content_type="application/json")
        if status == 401:  # RFC 6750: a key presented and refused is an invalid_token
            resp.headers["WWW-Authenticate"] = 'Bearer realm="kubemaas"' + (
                ', error="invalid_token"' if invalid_key else "")
        if retry_after is not None:
            resp.headers["Retry-After"] = str(retry_after)
        caller_id = request.headers.get(REQUEST_ID, "")
        if valid_id(caller_id):  # the refusal is named as its answer would have been
            resp.headers[REQUEST_ID] = caller_id
        if request.body_exists and not request.content.is_eof():
            resp.force_close()  # do not read (or linger over) a body we refuse
        return resp

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        proto = request.protocol if isinstance(request.protocol, HardenedHandler) else None
        if proto is not None:
            proto.request_started()
        watchdog = None
        try:
            if self.cors is not None and self.cors.is_preflight(request):
                return self.cors.preflight(request)  # browsers send no key with one
            if request.path in self.open_paths and (
                    request.path != "/metrics" or request.method in ("GET", "HEAD")):
                return await self.handler(request)
            if request.body_exists:
                watchdog = self._watch_body(request)
            return await self._admit(request)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if proto is not None:
                proto.request_finished()

    def _watch_body(self, request: web.BaseRequest) -> _BodyWatchdog | None:
        content = request.content
        if content.is_eof():
            return None
        return _BodyWatchdog(request, self.body_window_s, self.openai, self.metrics)

    async def _admit(self, request: web.BaseRequest) -> web.StreamResponse:
        name = ANONYMOUS
        if self.keys is not None:
            headers = request.headers
            presented = presented_key(headers.get("Authorization"), headers.get("x-api-key"))
            found = self.keys.match(presented) if presented is not None else None
            if found is None:
                outcome = "missing" if presented is None else "invalid"
                self.metrics.auth.inc(("", outcome))
                return self._refuse(request, 401, "a valid API key is required: "
                                    "Authorization: Bearer KEY or x-api-key: KEY"
                                    if outcome == "missing" else "the API key is not valid",
                                    "invalid_api_key", invalid_key=outcome == "invalid")
            name = found
            self.metrics.auth.inc((name, "ok"))
            token = request_context.set({"api_key": name})  # in the request's log records
            try:
                return await self._limit(request, name)
            finally:
                request_context.reset(token)
        return await self._limit(request, name)

    async def _limit(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        if self.limiter is None or (request.path in UNMETERED_PATHS and
                                    request.method in ("GET", "HEAD")):
            return await self.handler(request)
        refusal = self.limiter.admit(name, time.monotonic())
        if refusal is not None:
            return self._limited(request, name, refusal)
        sink = UsageSink()
        token = current_usage.set(sink)
        try:
            return await self.handler(request)
        finally:
            current_usage.reset(token)
            if sink.tokens:
                self.limiter.charge_tokens(name, sink.tokens, time.monotonic())
                self.metrics.tokens.inc((name,), sink.tokens)

    def _limited(self, request: web.BaseRequest, name: str, refusal: Refusal) -> web.Response:
        self.metrics.limited.inc((name, refusal.limit))
        what = ("requests per second" if refusal.limit == "requests" else "tokens per minute")
        return self._refuse(request, 429, f"rate limit of {what} for this key reached; retry "
                            f"after {refusal.retry_after_s} s", "rate_limit_exceeded",
                            refusal.retry_after_s)


class _BodyWatchdog:
    """Every ``window`` seconds until the body is complete: less than BODY_MIN_BYTES_PER_S on
    average since the last check ends the request. OIP: the body read fails with BodyTimeout
    (408, connection closed); OpenAI: the connection is closed, which cancels the handler."""

    def __init__(self, request: web.BaseRequest, window: float, openai: bool,
                 metrics: SecurityMetrics) -> None:
        self.request, self.window, self.openai = request, window, openai
        self.metrics = metrics
        self.seen = request.content.total_bytes
        self.handle = asyncio.get_running_loop().call_later(window, self._check)

    def _check(self) -> None:
        content = self.request.content
        if content.is_eof() or content.exception() is not None:
            return
        if content.total_bytes - self.seen < BODY_MIN_BYTES_PER_S * self.window:
            log.warning("request body too slow; closing", extra={"fields": {
                "path": self.request.path, "received": content.total_bytes}})
            self.metrics.closed.inc(("body_timeout",))
            if self.openai:
                if self.request.transport is not None:
                    self.request.transport.close()
            else:
                content.set_exception(BodyTimeout(
                    f"the request body arrived at under {BODY_MIN_BYTES_PER_S} bytes/s"))
            return
        self.seen = content.total_bytes
        self.handle = asyncio.get_running_loop().call_later(self.window, self._check)

    def cancel(self) -> None:
        self.handle.cancel()


class Security:
    """What serve() needs: the server to run, its TLS context, the metrics-only server, and a
    watcher that re-reads mounted Secrets."""

    def __init__(self, settings: Settings, metrics: Metrics, handler: Handler, *,
                 openai: bool, **server_kwargs: Any) -> None:
        self.settings = settings
        self.smetrics = SecurityMetrics()
        self.keys = KeyStore(settings.api_keys_dir) if settings.api_keys_dir else None
        self.tls = TLSFiles(settings.tls_dir) if settings.tls_dir else None
        limits = Limits(settings.rate_limit_rps, settings.rate_limit_burst,
                        settings.rate_limit_tpm)
        limiter = RateLimiter(limits) if limits.enabled else None
        cors = CorsPolicy.from_settings(settings)
        self.gate = Gate(handler, self.keys, limiter, openai, self.smetrics,
                         settings.header_timeout_s, cors,
                         metrics_without_key=settings.metrics_without_key)
        if cors is not None:
            server_kwargs["request_factory"] = request_factory(cors)
        self._set_limit_gauges(limits)
        metrics.collectors.append(self.smetrics.lines)
        self.handler = handler
        # keepalive_timeout bounds a connection waiting for a request (from its start or its
        # last response); the header timeout bounds a request that has begun arriving
        self.server = HardenedServer(
            self.gate, access_log=None, keepalive_timeout=settings.idle_timeout_s,
            max_line_size=8190, max_field_size=8190, max_headers=100,
            header_timeout_s=settings.header_timeout_s,
            on_header_timeout=lambda: self.smetrics.closed.inc(("header_timeout",)),
            error_body=malformed_body(openai), **server_kwargs)
        self._task: asyncio.Task[None] | None = None
        self._metrics_runner: web.ServerRunner | None = None

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.context if self.tls is not None else None

    def _set_limit_gauges(self, limits: Limits) -> None:
        names = sorted(self.keys.keys.digests) if self.keys is not None else [ANONYMOUS]
        self.smetrics.limit_rps.values.clear()
        self.smetrics.limit_tpm.values.clear()
        for name in names:
            self.smetrics.limit_rps.set((name,), limits.requests_per_second)
            self.smetrics.limit_tpm.set((name,), limits.tokens_per_minute)
        self.smetrics.keys_loaded.set((), len(names) if self.keys is not None else 0)
        self._limits = limits

    async def start(self) -> None:
        """Start the Secret watcher and, with --metrics-port, the metrics-only listener."""
        if self.keys is not None or self.tls is not None:
            self._task = asyncio.ensure_future(self._watch())
        if self.settings.metrics_port is None:
            return
        from ..errors import StartupError

        runner = web.ServerRunner(self._metrics_server(), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.metrics_port,
                           reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"cannot listen on {self.settings.host}:"
                               f"{self.settings.metrics_port}: {exc.strerror or exc}") from None
        self._metrics_runner = runner
        port = runner.addresses[0][1] if runner.addresses else self.settings.metrics_port
        logging.getLogger("kubemaas.runtime.lifecycle").info(
            "metrics listening", extra={"fields": {"host": self.settings.host, "port": port}})

    def _metrics_server(self) -> HardenedServer:
        """The --metrics-port listener: GET /metrics only, with the serving port's connection
        limits (header deadline, idle timeout, header sizes)."""

        async def metrics_only(request: web.BaseRequest) -> web.StreamResponse:
            proto = request.protocol if isinstance(request.protocol, HardenedHandler) else None
            if proto is not None:
                proto.request_started()
            try:
                if request.path != "/metrics" or request.method not in ("GET", "HEAD"):
                    return web.json_response({"error": "this port serves GET /metrics only"},
                                             status=404)
                return await self.handler(request)
            finally:
                if proto is not None:
                    proto.request_finished()

        return HardenedServer(
            metrics_only, access_log=None, keepalive_timeout=self.settings.idle_timeout_s,
            max_line_size=8190, max_field_size=8190, max_headers=100,
            header_timeout_s=self.settings.header_timeout_s,
            on_header_timeout=lambda: self.smetrics.closed.inc(("header_timeout",)),
            error_body=_oip_error)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_EVERY_S)
            try:
                self.refresh()
            except Exception:  # a watcher that dies would silently stop rotations
                log.exception("re-reading mounted secrets failed")

    def refresh(self) -> None:
        if self.keys is not None:
            before = dict(self.keys.reloads)
            if self.keys.refresh():
                self._set_limit_gauges(self._limits)
            for outcome, n in self.keys.reloads.items():
                if n != before[outcome]:
                    self.smetrics.reloads.inc(("api_keys", outcome), n - before[outcome])
        if self.tls is not None:
            before = dict(self.tls.reloads)
            self.tls.refresh()
            for outcome, n in self.tls.reloads.items():
                if n != before[outcome]:
                    self.smetrics.reloads.inc(("tls", outcome), n - before[outcome])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
