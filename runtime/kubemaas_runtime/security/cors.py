"""Cross-origin requests from browsers (CORS), answered as vLLM's server (Starlette's
CORSMiddleware) answers them, for the origins ``--allowed-origins`` names.

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered here,
before the API key check: browsers never send credentials with one. Every other answer to an
allowed origin carries ``Access-Control-Allow-Origin`` (and ``-Credentials``), the refusals of
the gate (401, 429) and streamed answers among them: the headers are added as the answer is
prepared (``CorsRequest``), wherever it was made.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..settings import Settings

SAFELISTED_HEADERS = frozenset({"accept", "accept-language", "content-language",
                                "content-type"})
ANY_METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
PREFLIGHT_MAX_AGE_S = 600


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[str]
    methods: frozenset[str]  # upper case
    headers: frozenset[str]  # lower case
    credentials: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> CorsPolicy | None:
        if not settings.allowed_origins:
            return None
        return cls(frozenset(settings.allowed_origins),
                   frozenset(m.upper() for m in settings.allowed_methods),
                   frozenset(h.lower() for h in settings.allowed_headers),
                   settings.allow_credentials)

    def allows(self, origin: str) -> bool:
        return "*" in self.origins or origin in self.origins

    def _origin_headers(self, origin: str) -> dict[str, str]:
        # "*" cannot go with credentials: the caller's own origin is named instead
        if "*" in self.origins and not self.credentials:
            return {"Access-Control-Allow-Origin": "*"}
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers

    def decorate(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """An allowed origin's answer says so; others' are left as they are (the browser then
        keeps the answer from the page)."""
        origin = request.headers.get("Origin")
        if origin is None or "Access-Control-Allow-Origin" in response.headers or \
                not self.allows(origin):
            return
        for key, value in self._origin_headers(origin).items():
            if key == "Vary" and "Vary" in response.headers:
                value = f"{response.headers['Vary']}, {value}"
            response.headers[key] = value

    @staticmethod
    def is_preflight(request: web.BaseRequest) -> bool:
        return (request.method == "OPTIONS" and "Origin" in request.headers
                and "Access-Control-Request-Method" in request.headers)

    def preflight(self, request: web.BaseRequest) -> web.Response:
        origin = request.headers["Origin"]
        method = request.headers["Access-Control-Request-Method"].strip().upper()
        asked = [h.strip().lower() for h in
                 request.headers.get("Access-Control-Request-Headers", "").split(",")
                 if h.strip()]
        refused = []
        if not self.allows(origin):
            refused.append("origin")
        if "*" not in self.methods and method not in self.methods:
            refused.append("method")
        if "*" not in self.headers and not set(asked) <= self.headers | SAFELISTED_HEADERS:
            refused.append("headers")
        headers = {"Vary": "Origin", "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
                   "Access-Control-Allow-Methods": ANY_METHODS if "*" in self.methods else
                   ", ".join(sorted(self.methods))}
        if "*" in self.headers:
            if asked:
                headers["Access-Control-Allow-Headers"] = ", ".join(asked)
        else:
            headers["Access-Control-Allow-Headers"] = ", ".join(
                sorted(self.headers | SAFELISTED_HEADERS))
        if refused:
            return web.Response(status=400, text=f"Disallowed CORS {', '.join(refused)}",
                                headers=headers)
        return web.Response(status=200, text="OK",
                            headers={**headers, **self._origin_headers(origin)})


class CorsRequest(web.BaseRequest):
    """A request whose answer gets its CORS headers as it is prepared (the hook aiohttp's
    ``web.Request`` uses for ``on_response_prepare``, which the low-level server lacks)."""

    policy: CorsPolicy

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        self.policy.decorate(self, response)


def request_factory(policy: CorsPolicy) -> Any:
    """``web.Server``'s ``request_factory``: its requests are ``CorsRequest``s of ``policy``."""
    kind: type[CorsRequest] = type("BoundCorsRequest", (CorsRequest,), {"policy": policy})

    def make(message: Any, payload: Any, protocol: Any, writer: Any,
             task: Any) -> web.BaseRequest:
        return kind(message, payload, protocol, writer, task, asyncio.get_running_loop())

    return make
