"""HTTP/REST endpoints of the Open Inference Protocol v2 (+ TF Serving v1 predict and /metrics).

Built on aiohttp's low-level ``web.Server``: one handler, routing by splitting the path, no
middleware, no access log on the hot path (see bench/runtime/http_stack.py and docs/runtime.md for
the measurement behind this choice). This layer maps errors to status codes and never touches
tensors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..dataplane import DataPlane
from ..errors import (
    InvalidInput,
    PayloadTooLarge,
    RuntimeErrorBase,
    Unavailable,
    UnsupportedEncoding,
)
from ..logs import request_context
from ..metrics import Metrics
from .body_budget import BodyBudget, BodyErrors
from .expect import go_ahead
from .request_log import CLIENT_GONE, HEADER, UNLOGGED, valid_id, write_record

log = logging.getLogger("kubemaas.runtime.rest")

_JSON = "application/json"
_HEADER_LEN = "Inference-Header-Content-Length"
_OUTCOME = {200: "ok", 400: "client_error", 404: "not_found", 405: "client_error",
            413: "client_error", 415: "client_error", 500: "server_error", 503: "unavailable"}
_BodyReader = Callable[[], Awaitable[bytes]]  # reads the request body, counting it
# the codings aiohttp decodes (any other it passes through as if there were none)
_CODINGS = frozenset({"identity", "gzip", "deflate", "br", "zstd"})


def _closing(exc: RuntimeErrorBase) -> RuntimeErrorBase:
    exc.close_connection = True  # the rest of the body is not read
    return exc


_BODY_ERRORS = BodyErrors(
    too_large=PayloadTooLarge,
    busy=lambda message: _closing(Unavailable(message, retry_after_s=1)),
    unreadable=lambda message: _closing(InvalidInput(message)))


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(doc, separators=(",", ":")).encode(), status=status,
                        content_type=_JSON)


def _error(status: int, message: str, retry_after: int | None = None,
           allow: str | None = None) -> web.Response:
    resp = _json({"error": message}, status)
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    if allow is not None:  # a 405 names the methods the route takes (RFC 9110)
        resp.headers["Allow"] = allow
    return resp


class RestServer:
    def __init__(self, dataplane: DataPlane, metrics: Metrics, max_request_bytes: int,
                 max_inflight_bytes: int | None = None, log_requests: bool = False) -> None:
        self.dp = dataplane
        self.metrics = metrics
        self.inflight = 0  # HTTP inference requests being handled (for SIGTERM drain)
        # request bodies held by requests in flight: 413 and 503 past their bounds
        self.bodies = BodyBudget(max_request_bytes, max_inflight_bytes or 4 * max_request_bytes,
                                 _BODY_ERRORS)
        # what answers a request: with --log-requests through _recorded (the hot path stays as
        # it is without)
        self.entry = self._recorded if log_requests else self.handle
        self.server = web.Server(self.entry, access_log=None)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        """The body, counted in self.bodies until the caller releases it (request done)."""
        self.bodies.admit(request)
        coding = request.headers.get("Content-Encoding")
        if coding is not None and coding.strip().lower() not in _CODINGS:
            raise UnsupportedEncoding(f"Content-Encoding {coding!r} is not supported; use "
                                      "gzip, deflate, br, zstd or none")
        await go_ahead(request)
        return await self.bodies.read(request)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        parts = request.path.strip("/").split("/")
        method = request.method
        try:
            if parts[0] == "v2":
                return await self._v2(request, method, parts)
            if parts[0] == "v1" and len(parts) == 3 and parts[1] == "models":
                return await self._v1(request, method, parts[2])
            if parts == ["metrics"] and method in ("GET", "HEAD"):
                return web.Response(body=self.metrics.render(),
                                    content_type="text/plain", charset="utf-8",
                                    headers={"X-Content-Type-Options": "nosniff"})
            return _error(404, f"no route for {method} {request.path}")
        except RuntimeErrorBase as exc:
            return self._error_response(exc)

    async def _recorded(self, request: web.BaseRequest) -> web.StreamResponse:
        """``handle``, and the request's record when it ends. The caller's X-Request-Id (the
        v2 protocol's answers carry only the body's ``id``) names the record and every other
        record written meanwhile, and comes back in the answer's header."""
        started, status = time.monotonic(), 500
        given = request.headers.get(HEADER)
        rid = given if given and valid_id(given) else None
        token = request_context.set({**(request_context.get() or {}), "request_id": rid}) \
            if rid is not None else None
        try:
            resp = await self.handle(request)
            if rid is not None:
                resp.headers[HEADER] = rid
            status = resp.status
            return resp
        except (asyncio.CancelledError, ConnectionResetError):
            status = CLIENT_GONE
            raise
        finally:
            if request.path not in UNLOGGED:
                write_record(request.method, request.path, status, started)
            if token is not None:
                request_context.reset(token)

    def _error_response(self, exc: RuntimeErrorBase) -> web.Response:
        retry = exc.retry_after_s if isinstance(exc, Unavailable) else None
        resp = _error(exc.status, exc.message, retry)
        if exc.close_connection:
            resp.force_close()  # the unread rest of the body makes the connection unusable
        return resp

    async def _v2(self, request: web.BaseRequest, method: str,
                  parts: list[str]) -> web.StreamResponse:
        n = len(parts)
        if n == 1:
            return self._get_only(method) or _json(self.dp.server_metadata())
        if parts[1] == "health" and n == 3:
            if parts[2] == "live":
                return self._get_only(method) or _json({"live": self.dp.live()})
            if parts[2] == "ready":
                ready = self.dp.ready()
                return self._get_only(method) or _json({"ready": ready}, 200 if ready else 503)
        if parts[1] == "models" and n >= 3:
            name = parts[2]
            version: str | None = None
            rest = parts[3:]
            if len(rest) >= 2 and rest[0] == "versions":
                version = rest[1]
                rest = rest[2:]
            if not rest:
                return self._get_only(method) or _json(self.dp.model_metadata(name, version))
            if rest == ["ready"]:
                ready = self.dp.model_ready(name, version)
                return self._get_only(method) or _json({"name": name, "ready": ready},
                                                       200 if ready else 503)
            if rest == ["infer"]:
                if method != "POST":
                    return _error(405, "use POST for infer", allow="POST")
                return await self._infer(request, name, version)
        return _error(404, f"no route for {method} {request.path}")

    @staticmethod
    def _get_only(method: str) -> web.Response | None:
        if method in ("GET", "HEAD"):
            return None
        return _error(405, f"method {method} is not allowed here; use GET",
                      allow="GET, HEAD")

    async def _infer(self, request: web.BaseRequest, name: str,
                     version: str | None) -> web.StreamResponse:
        async def serve(read: _BodyReader) -> web.Response:
            raw_len = request.headers.get(_HEADER_LEN)
            header_length: int | None = None
            if raw_len is not None:
                try:
                    header_length = int(raw_len)
                except ValueError:
                    raise InvalidInput(
                        f"{_HEADER_LEN} must be an integer, got {raw_len!r}") from None
            body = await read()
            # the dataplane drops the JSON text once decoded: keep no reference here
            pending = self.dp.infer(name, version, body, header_length)
            del body
            out, out_header_len = await pending
            if out_header_len is None:
                return web.Response(body=out, content_type=_JSON)
            return web.Response(body=out, content_type="application/octet-stream",
                                headers={_HEADER_LEN: str(out_header_len)})

        return await self._counted(request, name, "infer", serve)

    async def _v1(self, request: web.BaseRequest, method: str,
                  target: str) -> web.StreamResponse:
        if target.endswith(":predict"):
            if method != "POST":
                return _error(405, "use POST for :predict", allow="POST")
            name = target[: -len(":predict")]

            async def serve(read: _BodyReader) -> web.Response:
                body = await read()
                pending = self.dp.predict_v1(name, body)
                del body
                return web.Response(body=await pending, content_type=_JSON)

            return await self._counted(request, name, "predict", serve)
        if ":" not in target:
            ready = self.dp.model_ready(target, None)
            return self._get_only(method) or _json({"name": target, "ready": ready},
                                                   200 if ready else 503)
        return _error(404, f"no route for {method} {request.path}")

    async def _counted(self, request: web.BaseRequest, name: str, endpoint: str,
                       serve: Callable[[_BodyReader], Awaitable[web.Response]]
                       ) -> web.StreamResponse:
        """A request with a body: ``serve`` reads it (counted in self.bodies until the request
        ends) and answers; its errors map to their status, and the request is counted in
        self.inflight and observed under ``endpoint``."""
        start = time.perf_counter()
        self.inflight += 1
        status = 200
        charged = 0

        async def read() -> bytes:
            nonlocal charged
            body = await self._read_body(request)
            charged = len(body)
            return body

        try:
            return await serve(read)
        except RuntimeErrorBase as exc:
            status = exc.status
            return self._error_response(exc)
        except (ConnectionResetError, asyncio.CancelledError):  # the client went away
            status = CLIENT_GONE
            raise
        except Exception:
            status = 500
            log.exception("unexpected error in %s", endpoint)
            return _error(500, "internal error; see the server log")
        finally:
            self.inflight -= 1
            self.bodies.release(charged)
            self._observe(name, endpoint, status, start)

    def _observe(self, name: str, endpoint: str, status: int, start: float) -> None:
        if name != self.dp.model_name:
            name = "_unknown"  # bounded label values: never one series per bad URL
        took = time.perf_counter() - start
        self.metrics.requests.inc((name, endpoint, _OUTCOME.get(status, "client_error")))
        self.metrics.request_duration.observe((name, endpoint), took)
        if log.isEnabledFor(logging.DEBUG):  # access log only when asked: it costs on the hot path
            log.debug("request", extra={"fields": {
                "model": name, "endpoint": endpoint, "status": status,
                "ms": round(took * 1000, 3)}})
