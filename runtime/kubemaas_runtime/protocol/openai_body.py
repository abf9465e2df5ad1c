"""Request bodies of the OpenAI server, read within the bounds of body_budget.py and parsed as
JSON; a body's bytes count until it is parsed."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..request_json import parse_json
from .body_budget import BodyBudget, BodyErrors
from .expect import go_ahead
from .openai_errors import ApiError

_ERRORS = BodyErrors(
    too_large=lambda message: ApiError(413, message),
    busy=lambda message: ApiError(503, message, retry_after=1, close=True),
    unreadable=lambda message: ApiError(400, message, close=True))


class BodyReader:
    def __init__(self, max_request_bytes: int, max_inflight_bytes: int) -> None:
        self.budget = BodyBudget(max_request_bytes, max(max_inflight_bytes, max_request_bytes),
                                 _ERRORS)

    async def read_json(self, request: web.BaseRequest) -> Any:
        """The body parsed as JSON, or ApiError (413, 503, or 400 for a body that cannot be
        read or parsed)."""
        self.budget.admit(request)
        await go_ahead(request)
        body = await self.budget.read(request)
        try:
            return parse_json(body)
        except ValueError as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        finally:
            self.budget.release(len(body))
