"""A scriptable HTTP server on 127.0.0.1 for the downloaders' fault tests: each route is a
function of the request handler, and every request (method, path, headers) is recorded, so a test
can show what reached a server it should never have reached."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Callable
from typing import Any

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class ScriptedServer:
    def __init__(self, routes: dict[str, Route] | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _route(self) -> None:
                outer.requests.append((self.command, self.path, dict(self.headers)))
                path = self.path.split("?")[0]
                fn = outer.routes.get(path) or outer.routes.get("*")
                if fn is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    fn(self)  # a client that gave up mid-answer: expected in these tests

            do_GET = do_HEAD = _route

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Quiet(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def body(data: bytes, status: int = 200, headers: dict[str, str] | None = None,
         length: int | None = -1, send: int | None = None) -> Route:
    """Answer ``data`` (its first ``send`` bytes only, then close: a cut-off body). ``length``:
    -1 for the true Content-Length, None for none (the body ends when the connection closes)."""
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        if length is not None:
            h.send_header("Content-Length", str(len(data) if length == -1 else length))
        if length is None or send is not None:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data[:send] if send is not None else data)
    return route


def redirect(location: str, status: int = 307) -> Route:
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location + h.path)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return route


def ranged(data: bytes, cut: int | None = None, etag: str | None = None) -> Route:
    """A file that honours ``Range: bytes=N-`` (206 + Content-Range) and, with an ``etag``,
    ``If-Range`` (another ETag: the whole file, 200); with ``cut``, the connection closes after
    that many bytes of the body (a server that died mid-file)."""
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        spec = h.headers.get("Range")
        if spec and etag and h.headers.get("If-Range") not in (None, etag):
            spec = None  # the file changed since the client's bytes: all of it
        start = int(spec.split("=")[1].rstrip("-")) if spec else 0
        h.send_response(206 if spec else 200)
        if etag:
            h.send_header("ETag", etag)
        if spec:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) - start))
        if cut is not None:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data[start:] if cut is None else data[start:start + cut])
    return route


def trickle(size: int, seconds: float = 60) -> Route:
    """Says ``size`` bytes, sends one every 50 ms (for ``seconds`` at most): a body that never
    lets a socket read timeout fire."""
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(size))
        h.end_headers()
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.05)
    return route
