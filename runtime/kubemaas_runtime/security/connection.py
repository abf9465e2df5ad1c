"""Connection-level limits aiohttp does not have: a deadline for a request's headers.

aiohttp closes a connection that waits for a request longer than its keep-alive timeout, counted
from the connection's start or the last response; that bounds idle connections. It has no separate
bound for a request that has begun arriving: a client sending headers a byte at a time holds the
connection for the whole keep-alive timeout, which must stay long (a proxy's pooled upstream
connections are idle for minutes). ``HardenedHandler`` arms a deadline at the first byte of each
request and the gate disarms it when the request's headers are complete; a client that has not
finished its headers by then is disconnected.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

_QUOTED = re.compile(r":?\s*b['\"]")


class HardenedHandler(RequestHandler):
    header_timeout_s = 10.0
    on_timeout: Callable[[], None] | None = None
    # (status, message) -> the protocol's JSON error body, for the 4xx aiohttp answers itself
    error_body: Callable[[int, str], bytes] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._in_request = False

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and not self._in_request and data:
            self._header_deadline = asyncio.get_running_loop().call_later(
                self.header_timeout_s, self._headers_too_slow)
        super().data_received(data)

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self._in_request:
            return
        if self.on_timeout is not None:
            self.on_timeout()
        self.force_close()
        if self.transport is not None:
            self.transport.close()

    def request_started(self) -> None:
        """The gate saw the request's headers complete."""
        self._in_request = True
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def request_finished(self) -> None:
        self._in_request = False

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (a header line too long, a control
        character, a bad chunk size): plain text echoing the offending bytes. A 4xx is answered
        in the protocol's error shape instead, naming only the fault."""
        resp = super().handle_error(request, status, exc, message)  # logs, checks nothing sent
        if self.error_body is None or not 400 <= status < 500:
            return resp
        shaped = web.Response(status=status, content_type="application/json",
                              body=self.error_body(status, fault(message or "")))
        shaped.force_close()
        return shaped

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        super().connection_lost(exc)


def fault(message: str) -> str:
    """An HTTP parse error's message without the bytes it quotes (``...: b'...'``)."""
    first = (message.strip().splitlines() or [""])[0]
    text = _QUOTED.split(first, maxsplit=1)[0].replace('"', '').strip().rstrip(":").strip()
    return f"malformed HTTP request: {text or 'bad request'}"


class HardenedServer(web.Server):
    """``web.Server`` whose connections are HardenedHandlers with the given header timeout."""

    def __init__(self, *args: Any, header_timeout_s: float,
                 on_header_timeout: Callable[[], None] | None = None,
                 error_body: Callable[[int, str], bytes] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handler_class = type("BoundHardenedHandler", (HardenedHandler,), {
            "header_timeout_s": header_timeout_s,
            "on_timeout": staticmethod(on_header_timeout) if on_header_timeout else None,
            "error_body": staticmethod(error_body) if error_body else None})

    def __call__(self) -> RequestHandler:
        # aiohttp's own __call__, with our handler class (it keeps _loop and _kwargs)
        return self._handler_class(self, loop=self._loop, **self._kwargs)  # type: ignore[no-any-return]
