"""The streamed answer of the OpenAI endpoints: server-sent events, one chunk per token.

A stream's token chunks differ only in their text, so their bytes are rendered once per stream
around the text (``ChunkFormat``): per token, only the text is JSON-encoded. The deltas that are
ready together (one per engine step while the event loop keeps up, more when it falls behind)
go out in one write, and the finishing chunk, the usage chunk and ``[DONE]`` in the last one:
on small models a step takes a few milliseconds and a write per event was a large share of the
event loop's work. Chunks with logprobs are built from documents (they are rare and large).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from ..llm.request_stream import Delta, RequestStream
from ..llm.sampling import TokenLogprobs
from .openai_answer import Choice, logprobs_doc, usage_doc
from .openai_direct import chunked, direct_tokens
from .openai_errors import generation_error
from .openai_reader import AnswerReader
from .openai_request_id import tag
from .openai_schema import GenerationRequest
from .openai_tool_stream import tool_call


def sse(doc: Any) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


class ChunkFormat:
    """The chunks of one choice of a stream (``head``: id, created, model)."""

    def __init__(self, head: dict[str, Any], req: GenerationRequest, tokenizer: Any,
                 index: int = 0, prompt: list[int] | None = None, read: bool = False) -> None:
        self.req = req
        self.tokenizer = tokenizer
        self.index = index
        # vLLM's return_token_ids, streamed: the prompt's ids on the first chunk (on chat, at
        # the top), each chunk's own token ids on it
        self.ids = req.return_token_ids
        self.prompt_ids = list(prompt or ()) if self.ids and not req.chat else None
        self.obj = "chat.completion.chunk" if req.chat else "text_completion"
        self.head = {**head, "object": self.obj}
        self.usage_field: dict[str, Any] = {"usage": None} if req.include_usage else {}
        # vLLM's stream_options.continuous_usage_stats: every chunk carries the choice's usage
        # so far (``counts``: its prompt and output tokens, set before each delta's chunks)
        self.continuous = req.continuous_usage
        self.counts = (len(prompt or ()), 0)
        self.fast = not (req.logprobs or self.ids or self.continuous)  # pre-rendered chunks
        # a named tool_choice: the text is that call's arguments, streamed as they come
        # (unless a reader reads it: the call follows the reasoning)
        self.named_call: dict[str, Any] | None = None
        if req.tools is not None and req.tools.choice == "named" and not read:
            self.named_call = tool_call(str(req.tools.name), "")
        # the token chunk around its text: the document's JSON split where the text goes
        marker = "\x00kubemaas-text\x00"
        self._pre, self._post = sse(self.doc(marker, None)).split(json.dumps(marker).encode())

    def doc(self, text: str | None, reason: str | None,
            logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        choice: dict[str, Any]
        if self.req.chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if self.named_call is not None and text is not None:
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}
            choice = {"index": self.index, "delta": delta, "logprobs": logprobs,
                      "finish_reason": reason}
        else:
            choice = {"index": self.index, "text": text or "", "logprobs": logprobs,
                      "finish_reason": reason}
        if self.continuous:
            prompt, output = self.counts
            return {**self.head, "choices": [choice], "usage": {
                "prompt_tokens": prompt, "completion_tokens": output,
                "total_tokens": prompt + output}}
        return {**self.head, "choices": [choice], **self.usage_field}

    def _ids(self, doc: dict[str, Any], ids: tuple[int, ...]) -> dict[str, Any]:
        """``doc`` with the chunk's token ids (and, on a completion's first, the prompt's)."""
        if self.ids:
            doc["choices"][0]["token_ids"] = list(ids)
            if self.prompt_ids is not None:
                doc["choices"][0]["prompt_token_ids"], self.prompt_ids = self.prompt_ids, None
        return doc

    def role(self, prompt: list[int]) -> bytes:
        """The first chunk: the role (and a named call's id and name, its arguments to come;
        with return_token_ids, the prompt's ids)."""
        first = self.doc(None, None)
        if self.ids:
            first["prompt_token_ids"] = prompt
        first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        if self.named_call is None:
            return sse(first)
        first["choices"][0]["delta"] = {"role": "assistant", "content": None,
                                        "tool_calls": [{"index": 0, **self.named_call}]}
        return sse(first)

    def token(self, text: str, lps: tuple[TokenLogprobs, ...], offset: int,
              ids: tuple[int, ...] = ()) -> bytes:
        if self.fast:
            return self._pre + json.dumps(text).encode() + self._post
        logprobs = None
        if self.req.logprobs:
            logprobs = logprobs_doc(self.tokenizer, self.req.chat, list(lps), offset,
                                    as_ids=self.req.tokens_as_ids)
        return sse(self._ids(self.doc(text, None, logprobs), ids))

    def echo(self, choice: Choice, first: Delta) -> bytes:
        """The echoed prompt, before the choice's first token (with its logprobs, asked);
        on chat, the continued message's content (none: no chunk)."""
        if self.req.chat:
            if not choice.echo_text:
                return b""
            doc = self.doc(None, None)
            doc["choices"][0]["delta"] = {"content": choice.echo_text}
            return sse(doc)
        logprobs = None
        if self.req.logprobs:
            logprobs = logprobs_doc(self.tokenizer, False, list(first.prompt_logprobs or ()), 0,
                                    unscored=choice.prompt[0], as_ids=self.req.tokens_as_ids)
        return sse(self._ids(self.doc(choice.echo_text, None, logprobs), ()))

    def read_events(self, events: list[tuple[Any, ...]], lps: tuple[TokenLogprobs, ...],
                    ids: tuple[int, ...] = ()) -> list[bytes]:
        """A chunk per event of an ``AnswerReader``: reasoning, content, a call's start
        (index, id, name, empty arguments), a piece of its arguments. The delta's logprobs
        and token ids, if asked, go on its first chunk (on a chunk of their own when the
        reader holds its text back)."""
        logprobs = None
        if self.req.logprobs and lps:
            logprobs = logprobs_doc(self.tokenizer, True, list(lps), 0,
                                    as_ids=self.req.tokens_as_ids)
        pending = logprobs is not None or (self.ids and bool(ids))
        out = []
        for event in events:
            if event[0] == "content" and not pending and self.fast:  # the common case
                out.append(self._pre + json.dumps(event[1]).encode() + self._post)
                continue
            doc = self.doc(None, None, logprobs)
            if pending:
                doc = self._ids(doc, ids)
            if event[0] == "content":
                doc["choices"][0]["delta"] = {"content": event[1]}
            elif event[0] == "reasoning":  # under both names clients read it by
                doc["choices"][0]["delta"] = {"reasoning_content": event[1],
                                              "reasoning": event[1]}
            elif event[0] == "call":
                doc["choices"][0]["delta"] = {"tool_calls": [{
                    "index": event[1], "id": event[2], "type": "function",
                    "function": {"name": event[3], "arguments": ""}}]}
            else:
                doc["choices"][0]["delta"] = {"tool_calls": [{
                    "index": event[1], "function": {"arguments": event[2]}}]}
            out.append(sse(doc))
            logprobs, pending = None, False
        if pending:
            out.append(sse(self._ids(self.doc(None, None, logprobs), ids)))
        return out

    def finish(self, reason: str, stop_reason: int | str | None = None,
               ids: tuple[int, ...] = ()) -> bytes:
        """The finishing chunk (with the ids of a last token no chunk carried: EOS, a stop
        token)."""
        doc = self._ids(self.doc(None if self.req.chat else "", reason), ids)
        doc["choices"][0]["stop_reason"] = stop_reason  # vLLM's, on the finishing chunk
        return sse(doc)

    def usage(self, lasts: list[Delta]) -> bytes:
        return sse({**self.head, "choices": [], "usage": usage_doc(lasts, self.req.n)})


async def ready_batches(streams: list[RequestStream]
                        ) -> AsyncIterator[list[tuple[int, list[Delta]]]]:
    """(choice index, deltas) of every stream that has some, as they become ready, until all
    streams are done. One stream (n = 1, nearly every request) is read directly."""
    if len(streams) == 1:
        async for batch in streams[0].batches():
            yield [(0, batch)]
        return
    readers = [s.batches().__aiter__() for s in streams]
    pending = {asyncio.ensure_future(r.__anext__()): i for i, r in enumerate(readers)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            ready = []
            for fut in sorted(done, key=pending.__getitem__):
                i = pending.pop(fut)
                try:
                    ready.append((i, fut.result()))  # an engine failure is raised here
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(readers[i].__anext__())] = i
            if ready:
                yield ready
    finally:
        for fut in pending:
            fut.cancel()


class ChoiceChunks:
    """One choice's chunks as its deltas come: its format, where its text stands (echo and
    logprobs offsets), its last delta, and its reader when the text is read for reasoning or
    tool calls."""

    def __init__(self, req: GenerationRequest, choice: Choice, fmt: ChunkFormat,
                 observe: Callable[[Delta], None], reader: AnswerReader | None) -> None:
        self.req, self.choice, self.fmt = req, choice, fmt
        self.observe, self.reader = observe, reader
        self.offset = 0
        self.last: Delta | None = None

    def add(self, delta: Delta, out: list[bytes]) -> None:
        """Append the chunks of ``delta`` to ``out``."""
        req, fmt = self.req, self.fmt
        self.observe(delta)
        fmt.counts = (delta.prompt_tokens, delta.completion_tokens)
        if req.echo and self.last is None:
            out.append(fmt.echo(self.choice, delta))
            self.offset += len(self.choice.echo_text)
        self.last = delta
        if self.reader is not None:
            self._read(self.reader, delta, out)
            return
        # a chunk per generated token, its text empty while a character is incomplete (as
        # vLLM does): the client sees the stream advance token by token
        sent = bool(delta.text or (delta.logprobs and req.logprobs) or
                    (delta.token_ids and delta.finish_reason is None))
        if sent:
            out.append(fmt.token(delta.text, delta.logprobs, self.offset, delta.token_ids))
            self.offset += len(delta.text)
        if delta.finish_reason is not None:
            out.append(fmt.finish(delta.finish_reason, delta.stop_reason,
                                  () if sent else delta.token_ids))

    def _read(self, reader: AnswerReader, delta: Delta, out: list[bytes]) -> None:
        """What the reader makes of a delta (and the finish)."""
        done = delta.finish_reason is not None
        out.extend(self.fmt.read_events(reader.feed(delta.text, final=done), delta.logprobs,
                                        delta.token_ids))
        if done:
            out.append(self.fmt.finish(reader.finish_reason(delta.finish_reason) or "stop",
                                       delta.stop_reason))


async def stream_response(request: web.BaseRequest, req: GenerationRequest,
                          choices: list[Choice], fmts: list[ChunkFormat],
                          observes: list[Callable[[Delta], None]],
                          readers: list[AnswerReader] | None = None) -> web.StreamResponse:
    """The stream of a request's choices (``choices[i]`` rendered by ``fmts[i]``). With
    ``readers`` (a chat whose text is read for reasoning or tool calls), each choice's text
    goes through its reader, which sends reasoning, content and calls as they are read."""
    streams = [c.stream for c in choices]
    writers = [ChoiceChunks(req, c, fmt, observe, None if readers is None else readers[i])
               for i, (c, fmt, observe) in enumerate(zip(choices, fmts, observes, strict=True))]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    tag(resp)
    # one plain choice: its token chunks are written as the engine delivers them (once
    # aiohttp has written the headers and a first chunk)
    direct = None
    if len(streams) == 1 and readers is None and not req.echo and chunked(request, resp):
        direct = direct_tokens(request, fmts[0], observes[0])
    await resp.prepare(request)
    if req.chat:
        await resp.write(b"".join(fmt.role(c.prompt) for fmt, c in zip(fmts, choices,
                                                                       strict=True)))
        streams[0].direct, direct = direct, None
    out: list[bytes] = []
    try:
        async for ready in ready_batches(streams):
            for i, batch in ready:
                for delta in batch:
                    writers[i].add(delta, out)
            if not all(s.done for s in streams):
                await resp.write(b"".join(out))
                out.clear()
                if direct is not None:
                    streams[0].direct, direct = direct, None
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:  # the engine failed this request: say so in the stream
        out.append(sse(generation_error(exc, "generation failed mid-stream").body()))
    finally:  # a delta still on its way must not be written after the response's end
        streams[0].direct = None
    lasts = [w.last for w in writers]
    if req.include_usage and all(d is not None for d in lasts):
        out.append(fmts[0].usage([d for d in lasts if d is not None]))
    out.append(b"data: [DONE]\n\n")
    await resp.write_eof(b"".join(out))
    return resp
