"""Token usage of the request being handled, for tokens-per-minute limits.

The gate opens a ``UsageSink`` around each request; the OpenAI endpoints add the prompt and
completion tokens of what they generated to the sink of the request they serve. A context
variable: each request runs in its own task, which copies the context at its start.
"""

from __future__ import annotations

from contextvars import ContextVar


class UsageSink:
    __slots__ = ("tokens",)

    def __init__(self) -> None:
        self.tokens = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens


current_usage: ContextVar[UsageSink | None] = ContextVar("kubemaas_usage", default=None)
