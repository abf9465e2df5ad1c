"""OpenAI's error object, with the HTTP status that fits."""

from __future__ import annotations

import logging
from typing import Any

from ..llm.request_stream import ShuttingDown
from ..llm.sampling import NotANumber, UnfollowableOutput

log = logging.getLogger("kubemaas.runtime.openai")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, retry_after: int | None = None,
                 close: bool = False, allow: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after
        self.close = close  # the connection cannot carry another request after this answer
        self.allow = allow  # a 405's methods the route takes

    def body(self) -> dict[str, Any]:
        kind = {400: "invalid_request_error", 404: "invalid_request_error",
                413: "invalid_request_error", 405: "invalid_request_error",
                429: "rate_limit_error", 503: "service_unavailable_error"}.get(
                    self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.code}}


def bad_request(message: str, param: str) -> ApiError:
    """400 with the request field it concerns."""
    return ApiError(400, message, param)


def generation_error(exc: Exception, where: str = "generation failed") -> ApiError:
    """How a request the engine failed is answered: a 400 that says why when the request's own
    limits left its output no token to go on with; a 500 that says why when the model's output
    was NaN; a 503 when the server's drain timed out while it ran; else a 500 (logged with its
    traceback)."""
    if isinstance(exc, ShuttingDown):
        return ApiError(503, str(exc), retry_after=1)
    if isinstance(exc, UnfollowableOutput):
        log.info("%s: %s", where, exc)
        return ApiError(400, str(exc))
    if isinstance(exc, NotANumber):  # the model's (or its adapter's) numbers, said as they are
        log.error("%s: %s", where, exc)
        return ApiError(500, str(exc))
    log.error(where, exc_info=exc)
    return ApiError(500, f"generation failed: {type(exc).__name__}; see the server log")
