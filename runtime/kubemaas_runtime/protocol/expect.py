"""``Expect: 100-continue`` (RFC 9110 §10.1.1) for aiohttp's low-level server, which does not
answer it as aiohttp's router does: a client that sends it waits for ``100 Continue`` before its
body (curl for 1 s on bodies over 1 MiB, others until their own timeout)."""

from __future__ import annotations

from aiohttp import web


async def go_ahead(request: web.BaseRequest) -> None:
    """Before a handler reads the body: tell a client that waits for it to send the body (once
    the request's headers passed every check that could refuse it without its body)."""
    if request.version >= (1, 1) and \
            request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer's size counts from its own status line
