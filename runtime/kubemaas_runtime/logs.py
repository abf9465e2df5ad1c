"""The server's log: one JSON object per line on stderr (or one text line each), for our records
and for the libraries' alike (docs/runtime.md, "Logs").

Three things in torch's stack write to stderr past the logging root, each handled here: torch
gives its loggers a stderr handler of its own (glog-style lines, propagation off); transformers
and huggingface_hub draw progress bars (carriage-return animations); and at the interpreter's
teardown the native bindings loaded beside torch (triton's) print leak reports.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextvars import ContextVar
from typing import Any

lifecycle = logging.getLogger("kubemaas.runtime.lifecycle")  # see serving.py
# the request a record is written for: set while a server handles one (its request_id, the API
# key's name), so that every record written on its behalf names it; records written by other
# threads (the engine's) or outside a request carry none
request_context: ContextVar[dict[str, Any] | None] = ContextVar("kubemaas_request_context",
                                                                 default=None)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's fields: the request's, then its own (which win)."""
    fields = getattr(record, "fields", None)
    context = request_context.get()
    if not context:
        return fields if isinstance(fields, dict) else {}
    return {**context, **fields} if isinstance(fields, dict) else context


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


class ClientFaults(logging.Filter):
    """aiohttp's server logs a request it could not handle at error level, with a traceback,
    also when the client caused it: malformed HTTP (a header line too long, a bad chunk size), a
    body that does not decode or comes too slowly, a client gone while its answer was written or
    its body drained.
    Any client could fill the error log that way; such a record becomes one warning line that
    names the exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _client_fault(exc):
            reason = (str(exc).strip().splitlines() or [""])[0]
            record.msg, record.args = f"{record.getMessage()}: {type(exc).__name__}: {reason}", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def _client_fault(exc: BaseException) -> bool:
    from aiohttp import http_exceptions, web

    from .errors import RuntimeErrorBase

    return isinstance(exc, (http_exceptions.HttpProcessingError, web.RequestPayloadError,
                            ConnectionResetError)) or \
        (isinstance(exc, RuntimeErrorBase) and exc.status < 500) or \
        (isinstance(exc, RuntimeError) and str(exc) == "Connection closed.")


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp").setLevel(max(logging.WARNING, root.level))
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientFaults) for f in server_log.filters):
        server_log.addFilter(ClientFaults())
    lifecycle.setLevel(logging.INFO)
    logging.captureWarnings(True)  # library warnings become structured log lines too
    # read by huggingface_hub, and by transformers when it is imported (the load's timings are in
    # the "model loaded" record); a deployment may still set it to 0
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def route_torch_logs() -> None:
    """Send torch's log records through the root handler. When it is imported, torch gives each
    logger it configures ("torch", "torch._dynamo", ...) a stderr handler of its own and turns
    their propagation off; call this after that import (before it there is nothing to remove).
    Only the logging module's public view is used: the handlers torch's modules defined."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or name.split(".")[0] != "torch":
            continue
        torchs = [h for h in logger.handlers if type(h).__module__.split(".")[0] == "torch"]
        for handler in torchs:
            logger.removeHandler(handler)
        if torchs:
            logger.propagate = True


def quiet_teardown() -> None:
    """Point stderr at /dev/null for the interpreter's teardown, once the process has written
    its last record: there triton's bindings (loaded with torch) report the objects they leaked,
    dozens of lines that are not records. The exit itself is unchanged (threads joined, atexit
    handlers run, the same code)."""
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
