"""Request bodies of the OpenAI server, bounded one by one (``max_request_bytes``, 413) and all
together (``max_inflight_bytes``, 503 + Retry-After): a body is counted as its bytes arrive
until it is parsed, so clients that each hold a large body half sent cannot add up to more
memory than the bound."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..request_json import parse_json
from .expect import go_ahead
from .openai_errors import ApiError


class BodyReader:
    def __init__(self, max_request_bytes: int, max_inflight_bytes: int) -> None:
        self.max_request_bytes = max_request_bytes
        self.max_inflight_bytes = max(max_inflight_bytes, max_request_bytes)
        self.held = 0  # the bytes of bodies being read or parsed

    def _busy(self) -> ApiError:
        return ApiError(503, f"over {self.max_inflight_bytes} bytes of request bodies are in "
                        "flight; retry later", retry_after=1, close=True)

    async def read_json(self, request: web.BaseRequest) -> Any:
        """The body parsed as JSON, or ApiError (413, 503, or 400 for a body that cannot be
        read or parsed)."""
        length = request.content_length
        if length is not None and length > self.max_request_bytes:
            raise ApiError(413, f"request body of {length} bytes is over the limit of "
                           f"{self.max_request_bytes} bytes")
        if length is not None and self.held + length > self.max_inflight_bytes:
            raise self._busy()  # before the go-ahead: the body is never sent
        await go_ahead(request)
        chunks: list[bytes] = []
        total = 0
        try:
            while chunk := await _next_chunk(request):
                if total + len(chunk) > self.max_request_bytes:
                    raise ApiError(413, f"request body is over the limit of "
                                   f"{self.max_request_bytes} bytes")
                if self.held + len(chunk) > self.max_inflight_bytes:
                    raise self._busy()
                total += len(chunk)
                self.held += len(chunk)
                chunks.append(chunk)
            try:
                return parse_json(b"".join(chunks))
            except ValueError as exc:
                raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        finally:
            self.held -= total


async def _next_chunk(request: web.BaseRequest) -> bytes:
    try:
        return await request.content.readany()
    except web.RequestPayloadError as exc:  # a Content-Encoding that does not decode
        raise ApiError(400, f"the request body cannot be read: {exc}", close=True) from None
