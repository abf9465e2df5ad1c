"""The answer of ``POST /v1/responses``: a ``response`` object, or its stream of events.

Streamed, the events are OpenAI's, each ``event: <type>`` and ``data: {"type", …,
"sequence_number"}``: ``response.created`` and ``response.in_progress``; for the text, a
``message`` item (``response.output_item.added``, ``response.content_part.added``, an
``response.output_text.delta`` per token, then the ``.done`` events with the whole text); for
each tool call, a ``function_call`` item whose arguments come as
``response.function_call_arguments.delta`` events as the model writes them; then
``response.completed`` (or ``response.incomplete`` when ``max_output_tokens`` cut it, or
``response.failed`` if the engine failed) with the whole response.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..llm.request_stream import Delta
from .openai_answer import Choice, logprobs_doc
from .openai_errors import generation_error
from .openai_reader import AnswerReader
from .openai_request_id import tag
from .openai_responses import (
    ResponsesRequest,
    call_item,
    item_status,
    message_item,
    reasoning_item,
    response_doc,
    responses_usage,
)
from .openai_schema import GenerationRequest

_TEXT_EVENTS = {"message": "response.output_text", "reasoning": "response.reasoning_text"}


class ResponseEvents:
    """The events of one streamed response; ``output`` collects its finished items. The
    whole response is made by the same steps (``quiet``: no events written), so the two
    always have the same items. Spaces that would open a message item are held until text
    follows them: spaces alone after the calls (a newline after ``</tool_call>``) make no
    item; an answer that is nothing else is a message of them."""

    def __init__(self, head: tuple[str, int, str], rreq: ResponsesRequest,
                 quiet: bool = False) -> None:
        self.head, self.rreq, self.quiet = head, rreq, quiet
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.item: dict[str, Any] | None = None  # the item being written
        self.spaces: tuple[str, list[Any]] = ("", [])  # held: text, its logprobs
        self.logprobs: list[Any] = []  # of tokens read, not yet sent with the message's text
        self.final: dict[str, Any] | None = None  # the finished response

    def event(self, kind: str, **fields: Any) -> bytes:
        self.seq += 1
        if self.quiet:
            return b""
        doc = {"type": kind, "sequence_number": self.seq - 1, **fields}
        return f"event: {kind}\ndata: ".encode() + json.dumps(doc).encode() + b"\n\n"

    def response(self, status: str, usage: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
        return response_doc(*self.head, self.rreq, status, list(self.output), usage, error)

    def start(self) -> list[bytes]:
        return [self.event("response.created", response=self.response("in_progress")),
                self.event("response.in_progress", response=self.response("in_progress"))]

    def text(self, kind: str, text: str, logprobs: list[Any], hold: bool = True) -> list[bytes]:
        """A piece of the answer's text (``kind`` message) or of its reasoning (reasoning)."""
        out: list[bytes] = []
        opens = self.item is None or self.item["type"] != kind
        if kind == "message" and opens:
            text, logprobs = self.spaces[0] + text, self.spaces[1] + logprobs
            self.spaces = ("", [])
            if hold and not text.strip():
                self.spaces = (text, logprobs)
                return out
        if opens:
            out += self.close_item("completed")
            self.item = message_item("", "in_progress") if kind == "message" \
                else reasoning_item("", "in_progress")
            part = self.item["content"].pop()  # the item is announced empty, then its part
            out.append(self.event("response.output_item.added", output_index=len(self.output),
                                  item=self.item))
            out.append(self.event("response.content_part.added", item_id=self.item["id"],
                                  output_index=len(self.output), content_index=0, part=part))
            self.item["content"].append(part)
        assert self.item is not None
        part = self.item["content"][0]
        part["text"] += text
        fields: dict[str, Any] = {}
        if kind == "message":
            part["logprobs"] += logprobs
            fields["logprobs"] = logprobs
        out.append(self.event(_TEXT_EVENTS[kind] + ".delta", item_id=self.item["id"],
                              output_index=len(self.output), content_index=0, delta=text,
                              **fields))
        return out

    def call(self, call_id: str, name: str) -> list[bytes]:
        out = self.close_item("completed")
        self.item = call_item({"id": call_id, "function": {"name": name, "arguments": ""}},
                              "in_progress")
        out.append(self.event("response.output_item.added", output_index=len(self.output),
                              item=self.item))
        return out

    def arguments(self, text: str) -> list[bytes]:
        assert self.item is not None
        self.item["arguments"] += text
        return [self.event("response.function_call_arguments.delta", item_id=self.item["id"],
                           output_index=len(self.output), delta=text)]

    def close_item(self, status: str) -> list[bytes]:
        """The ``.done`` events of the item being written, which joins the output."""
        item, self.item = self.item, None
        if item is None:
            return []
        index, out = len(self.output), []
        if item["type"] in _TEXT_EVENTS:
            part = item["content"][0]
            fields = {"logprobs": part["logprobs"]} if item["type"] == "message" else {}
            out.append(self.event(_TEXT_EVENTS[item["type"]] + ".done", item_id=item["id"],
                                  output_index=index, content_index=0, text=part["text"],
                                  **fields))
            out.append(self.event("response.content_part.done", item_id=item["id"],
                                  output_index=index, content_index=0, part=part))
        else:
            out.append(self.event("response.function_call_arguments.done",
                                  item_id=item["id"], output_index=index,
                                  name=item["name"], arguments=item["arguments"]))
        item["status"] = status
        out.append(self.event("response.output_item.done", output_index=index, item=item))
        self.output.append(item)
        return out

    def finish(self, last: Delta, reasoning_tokens: int) -> list[bytes]:
        status = item_status(last.finish_reason)
        if self.logprobs and self.item is not None and self.item["type"] == "message":
            self.item["content"][0]["logprobs"] += self.logprobs  # (in its .done events)
            self.logprobs = []
        out = self.close_item(status)
        if not self.output:  # nothing else written: a message, empty or of its spaces
            out += self.text("message", "", self.logprobs, hold=False)
            out += self.close_item(status)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        self.final = self.response(status, responses_usage(last, reasoning_tokens))
        return [*out, self.event(kind, response=self.final)]

    def failed(self, message: str, code: str = "server_error") -> list[bytes]:
        out = self.close_item("incomplete")
        error = {"code": code, "message": message}
        return [*out, self.event("response.failed",
                                 response=self.response("failed", error=error))]


def _logprobs(tokenizer: Any, req: GenerationRequest, deltas: list[Delta]) -> list[Any]:
    if not req.logprobs:
        return []
    lps = [lp for d in deltas for lp in d.logprobs]
    return list(logprobs_doc(tokenizer, True, lps, 0)["content"])


async def complete_response(head: tuple[str, int, str], rreq: ResponsesRequest,
                            req: GenerationRequest, choice: Choice,
                            observe: Callable[[Delta], None], reader: AnswerReader | None,
                            tokenizer: Any) -> dict[str, Any]:
    """The whole response object, once the choice is done: its deltas taken by the steps of
    the stream, so that its items are the stream's."""
    deltas = []
    async for delta in choice.stream:
        observe(delta)
        deltas.append(delta)
    events = ResponseEvents(head, rreq, quiet=True)
    for delta in deltas:
        _delta_events(events, reader, delta, tokenizer, req)
    events.finish(deltas[-1], reader.reasoning_tokens(_pieces(deltas))
                  if reader is not None else 0)
    assert events.final is not None
    return events.final


def _pieces(deltas: list[Delta]) -> list[tuple[int, int]]:
    return [(len(d.text), len(d.token_ids)) for d in deltas]


def _delta_events(events: ResponseEvents, reader: AnswerReader | None, delta: Delta,
                  tokenizer: Any, req: GenerationRequest) -> list[bytes]:
    done = delta.finish_reason is not None
    if reader is None:
        logprobs = _logprobs(tokenizer, req, [delta])
        return events.text("message", delta.text, logprobs) if delta.text or logprobs else []
    events.logprobs += _logprobs(tokenizer, req, [delta])  # sent with the next message text
    out = []
    for event in reader.feed(delta.text, final=done):
        if event[0] == "content":
            logprobs, events.logprobs = events.logprobs, []
            out += events.text("message", event[1], logprobs)
        elif event[0] == "reasoning":
            out += events.text("reasoning", event[1], [])
        elif event[0] == "call":
            out += events.call(event[2], event[3])
        else:
            out += events.arguments(event[2])
    return out


async def stream_response(request: web.BaseRequest, head: tuple[str, int, str],
                          rreq: ResponsesRequest, req: GenerationRequest, choice: Choice,
                          observe: Callable[[Delta], None], reader: AnswerReader | None,
                          tokenizer: Any) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    tag(resp)
    await resp.prepare(request)
    events = ResponseEvents(head, rreq)
    await resp.write(b"".join(events.start()))
    out: list[bytes] = []
    deltas: list[Delta] = []
    try:
        async for batch in choice.stream.batches():
            for delta in batch:
                observe(delta)
                deltas.append(delta)
                out += _delta_events(events, reader, delta, tokenizer, req)
                if delta.finish_reason is not None:
                    out += events.finish(delta, reader.reasoning_tokens(_pieces(deltas))
                                         if reader is not None else 0)
            if not choice.stream.done:
                await resp.write(b"".join(out))
                out.clear()
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:  # the engine failed this request: say so in the stream
        error = generation_error(exc, "generation failed mid-stream")
        out += events.failed(error.message, "server_error" if error.status >= 500 else
                             "invalid_prompt")
    await resp.write_eof(b"".join(out))
    return resp
