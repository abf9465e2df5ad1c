"""aiohttp's records of requests the client broke (malformed HTTP, a body that does not decode
or comes too slowly, a client gone mid-answer) become one warning line; the server's own
failures keep their level and traceback."""

from __future__ import annotations

import logging
import sys

import pytest
from aiohttp import http_exceptions, web

from kubemaas_runtime.logs import ClientFaults
from kubemaas_runtime.security.gate import BodyTimeout


def record_of(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                             "Error handling request", (), info)


@pytest.mark.parametrize("exc", [
    http_exceptions.LineTooLong("header line", "8190", "9000"),
    http_exceptions.BadHttpMessage("bad chunk size"),
    web.RequestPayloadError("Can not decode content-encoding: br"),
    ConnectionResetError("Cannot write to closing transport"),
    RuntimeError("Connection closed."),
    BodyTimeout("the request body arrived at under 1024 bytes/s")])
def test_a_client_fault_is_one_warning_line(exc: BaseException) -> None:
    record = record_of(exc)
    assert ClientFaults().filter(record)
    assert record.levelno == logging.WARNING and record.exc_info is None
    message = record.getMessage()
    assert message.startswith(f"Error handling request: {type(exc).__name__}: ")
    assert "\n" not in message


@pytest.mark.parametrize("exc", [ValueError("a defect"), RuntimeError("something else"),
                                 KeyError("x")])
def test_the_servers_own_failures_stay_errors(exc: BaseException) -> None:
    record = record_of(exc)
    assert ClientFaults().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == "Error handling request"
