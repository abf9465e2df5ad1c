"""Each OpenAI request's id, and what its record in the log says (``--log-requests``).

The id is the caller's ``X-Request-Id`` header, else the body's ``request_id`` (vLLM's field),
else a new one. It names the answer (``chatcmpl-ID``, ``cmpl-ID``, ``embd-ID`` ...), comes back
in the ``X-Request-Id`` response header, and is a field of every log record written while the
request is handled, so a gateway's log, the client's answer and the server's log meet on one
key (request_log.py: what an id may be).
"""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..logs import request_context
from .openai_errors import ApiError, bad_request
from .request_log import HEADER, valid_id, write_record


@dataclass
class Trace:
    """One request as its log record tells it; the generation's fields are filled as its
    tokens come (the first choice's prompt, finish reason and first-token time, the completion
    tokens of all its choices)."""
    context: dict[str, Any]  # this request's request_context (its id, the API key's name)
    started: float = field(default_factory=time.monotonic)
    model: str | None = None
    stream: bool | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    ttft_s: float | None = None
    refusal: ApiError | None = None  # a malformed X-Request-Id header: answered with a 400
    tokens: tuple[Token[Any], Token[Any]] = field(init=False, repr=False)

    @property
    def id(self) -> str:
        return str(self.context["request_id"])

    def count_output(self, tokens: int) -> None:
        self.completion_tokens = (self.completion_tokens or 0) + tokens


current_trace: ContextVar[Trace | None] = ContextVar("kubemaas_trace", default=None)


def begin(request: web.BaseRequest) -> Trace:
    """The request's trace, current until ``end``: its id from the header (an empty one is
    none) or a new one. A malformed header refuses a POST (its answer would carry the id); a
    probe, /metrics or /v1/models ignores it: a gateway that stamps odd ids on its health
    checks must not take the pod for unhealthy."""
    given = request.headers.get(HEADER) or None
    rid = given if given is not None and valid_id(given) else uuid.uuid4().hex
    context = {**(request_context.get() or {}), "request_id": rid}
    trace = Trace(context)
    trace.tokens = (request_context.set(context), current_trace.set(trace))
    if given is not None and rid != given and request.method == "POST":
        trace.refusal = ApiError(400, f"the {HEADER} header must be 1 to 256 visible ASCII "
                                 "characters (no spaces)", HEADER)
    return trace


def end(trace: Trace) -> None:
    context_token, trace_token = trace.tokens
    current_trace.reset(trace_token)
    request_context.reset(context_token)


def adopt_body_id(doc: Any, request: web.BaseRequest) -> None:
    """vLLM's ``request_id`` body field names the request when no header does."""
    if not isinstance(doc, dict) or "request_id" not in doc:
        return
    rid = doc["request_id"]
    if not isinstance(rid, str) or not valid_id(rid):
        raise bad_request("'request_id' must be a string of 1 to 256 visible ASCII characters "
                          "(no spaces)", "request_id")
    trace = current_trace.get()
    if trace is not None and HEADER not in request.headers:
        trace.context["request_id"] = rid


def request_id() -> str:
    """The current request's id (a new one outside a request)."""
    trace = current_trace.get()
    return trace.id if trace is not None else uuid.uuid4().hex


def tag(resp: web.StreamResponse) -> None:
    """Name the request in the answer's headers (before they are sent)."""
    trace = current_trace.get()
    if trace is not None:
        resp.headers[HEADER] = trace.id


def record(trace: Trace, method: str, path: str, status: int) -> None:
    """The request's one record, when it has ended, with what the trace holds."""
    fields: dict[str, Any] = {}
    for name in ("model", "stream", "prompt_tokens", "completion_tokens", "finish_reason"):
        value = getattr(trace, name)
        if value is not None:
            fields[name] = value
    if trace.ttft_s is not None:
        fields["ttft_seconds"] = round(trace.ttft_s, 6)
    write_record(method, path, status, trace.started, fields)
