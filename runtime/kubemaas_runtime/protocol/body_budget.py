"""Request bodies bounded one by one (``max_request_bytes``: 413) and all together
(``max_inflight_bytes``: 503 + Retry-After), for the tensor server (rest.py) and the OpenAI
server (openai_body.py), each with its own error types.

A body counts against the bound as its bytes arrive, so clients that each hold a large body half
sent cannot add up to more memory than the bound; the caller gives a body's bytes back
(``release``) when it no longer holds them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class BodyErrors:
    """The server's own exceptions, made from a message: too large (413), too many bytes in
    flight (503 with Retry-After, closing the connection), unreadable (400, closing it)."""

    too_large: Callable[[str], Exception]
    busy: Callable[[str], Exception]
    unreadable: Callable[[str], Exception]


class BodyBudget:
    def __init__(self, max_request_bytes: int, max_inflight_bytes: int,
                 errors: BodyErrors) -> None:
        self.max_request_bytes = max_request_bytes
        self.max_inflight_bytes = max_inflight_bytes
        self.errors = errors
        self.held = 0  # the bytes of bodies being read or still held by their requests

    def _busy(self) -> Exception:
        return self.errors.busy(f"over {self.max_inflight_bytes} bytes of request bodies are in "
                                "flight; retry later")

    def admit(self, request: web.BaseRequest) -> None:
        """Refuse a declared Content-Length that is over either bound (before the client's
        Expect: 100-continue is answered: such a body is never sent)."""
        length = request.content_length
        if length is not None and length > self.max_request_bytes:
            raise self.errors.too_large(f"request body of {length} bytes is over the limit of "
                                        f"{self.max_request_bytes} bytes")
        if length is not None and self.held + length > self.max_inflight_bytes:
            raise self._busy()

    async def read(self, request: web.BaseRequest) -> bytes:
        """The whole body, its bytes counted in ``held`` until the caller releases them (on an
        error they are given back here)."""
        chunks: list[bytes] = []
        total = 0
        try:
            while chunk := await self._next_chunk(request):
                if total + len(chunk) > self.max_request_bytes:
                    raise self.errors.too_large(f"request body is over the limit of "
                                                f"{self.max_request_bytes} bytes")
                if self.held + len(chunk) > self.max_inflight_bytes:
                    raise self._busy()
                total += len(chunk)
                self.held += len(chunk)
                chunks.append(chunk)
        except BaseException:
            self.held -= total
            raise
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def release(self, nbytes: int) -> None:
        self.held -= nbytes

    async def _next_chunk(self, request: web.BaseRequest) -> bytes:
        try:
            return await request.content.readany()
        except web.RequestPayloadError as exc:  # a Content-Encoding that does not decode
            raise self.errors.unreadable(f"the request body cannot be read: {exc}") from None
