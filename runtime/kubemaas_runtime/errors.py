"""Errors that carry their intent: each maps to one HTTP status code and a message for a person."""

from __future__ import annotations


class RuntimeErrorBase(Exception):
    """Base of every error the dataplane reports to a client."""

    status = 500
    close_connection = False  # True when the request body was left unread

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(RuntimeErrorBase):
    """The request is malformed or does not match the model (HTTP 400)."""

    status = 400


class ModelNotFound(RuntimeErrorBase):
    """Unknown model name or version (HTTP 404)."""

    status = 404


class PayloadTooLarge(RuntimeErrorBase):
    """The request body is larger than the configured limit (HTTP 413)."""

    status = 413
    close_connection = True


class UnsupportedEncoding(RuntimeErrorBase):
    """A request body in a Content-Encoding the server cannot decode (HTTP 415)."""

    status = 415
    close_connection = True  # the body is not read


class Unavailable(RuntimeErrorBase):
    """Not ready, draining, overloaded or timed out (HTTP 503, with Retry-After)."""

    status = 503

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InferenceFailed(RuntimeErrorBase):
    """The model raised while running a request that passed validation (HTTP 500)."""

    status = 500


class StartupError(Exception):
    """The runtime cannot start: bad settings, model not found, checksum mismatch, corrupt model."""
