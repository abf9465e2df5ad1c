"""A request's id: from the X-Request-Id header, else the body's request_id, else made; and the
log formatters' request fields (the records written while a request is handled name it)."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp.test_utils import make_mocked_request

from kubemaas_runtime.logs import JsonFormatter, TextFormatter, request_context
from kubemaas_runtime.protocol.openai_errors import ApiError
from kubemaas_runtime.protocol.openai_request_id import (
    adopt_body_id,
    begin,
    current_trace,
    end,
    request_id,
)


def record(fields: dict[str, object] | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("kubemaas.test", logging.INFO, __file__, 1, "hello", None, None)
    if fields is not None:
        rec.fields = fields
    return rec


def test_records_name_the_request_they_are_written_for() -> None:
    assert "request_id" not in json.loads(JsonFormatter().format(record({"a": 1})))
    token = request_context.set({"request_id": "r-1", "api_key": "alice"})
    try:
        doc = json.loads(JsonFormatter().format(record({"a": 1})))
        assert (doc["request_id"], doc["api_key"], doc["a"]) == ("r-1", "alice", 1)
        # a record's own field wins over the request's
        assert json.loads(JsonFormatter().format(record({"api_key": "x"})))["api_key"] == "x"
        assert json.loads(JsonFormatter().format(record()))["request_id"] == "r-1"
        text = TextFormatter("%(message)s").format(record({"a": 1}))
        assert text == "hello request_id=r-1 api_key=alice a=1"
    finally:
        request_context.reset(token)
    assert TextFormatter("%(message)s").format(record()) == "hello"


def test_the_header_then_the_body_then_a_made_id() -> None:
    trace = begin(make_mocked_request("POST", "/v1/completions", {"X-Request-Id": "h-1"}))
    try:
        assert request_id() == "h-1" and request_context.get() == {"request_id": "h-1"}
        adopt_body_id({"request_id": "b-1"}, make_mocked_request(
            "POST", "/", {"X-Request-Id": "h-1"}))
        assert request_id() == "h-1"  # the header wins
    finally:
        end(trace)
    assert current_trace.get() is None and request_context.get() is None
    outer = request_context.set({"api_key": "alice"})  # the gate's
    trace = begin(make_mocked_request("POST", "/v1/completions"))
    try:
        assert len(trace.id) == 32 and trace.refusal is None
        adopt_body_id({"request_id": "b-2"}, make_mocked_request("POST", "/"))
        assert request_id() == "b-2"
        assert request_context.get() == {"api_key": "alice", "request_id": "b-2"}
        adopt_body_id(["not", "an", "object"], make_mocked_request("POST", "/"))
        assert request_id() == "b-2"
    finally:
        end(trace)
    assert request_context.get() == {"api_key": "alice"}
    request_context.reset(outer)
    assert len(request_id()) == 32  # outside a request: a new one


@pytest.mark.parametrize("given", ["a b", "x" * 257, "tab\there", "\u00e9t\u00e9"])
def test_a_malformed_header_is_refused_with_a_made_id(given: str) -> None:
    trace = begin(make_mocked_request("POST", "/", {"X-Request-Id": given}))
    end(trace)
    assert isinstance(trace.refusal, ApiError) and trace.refusal.status == 400
    assert trace.id != given and len(trace.id) == 32


@pytest.mark.parametrize("value", [5, None, "", "a\r\nSet-Cookie: x", "y" * 257, ["a"]])
def test_a_malformed_body_id_is_a_400(value: object) -> None:
    trace = begin(make_mocked_request("POST", "/"))
    try:
        with pytest.raises(ApiError) as caught:
            adopt_body_id({"request_id": value}, make_mocked_request("POST", "/"))
        assert caught.value.status == 400 and caught.value.param == "request_id"
    finally:
        end(trace)


def test_an_empty_header_is_no_id() -> None:
    trace = begin(make_mocked_request("POST", "/", {"X-Request-Id": ""}))
    end(trace)
    assert trace.refusal is None and len(trace.id) == 32
