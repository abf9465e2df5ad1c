"""OpenAI-compatible HTTP endpoints for language models.

``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (the tokenizer's chat
template), ``POST /v1/responses`` (a chat, answered as a Responses object: openai_responses.py),
``stream: true`` as server-sent events, vLLM's ``POST /tokenize`` and
``POST /detokenize``, for a pooling model ``POST /v1/embeddings``, ``/classify``, ``/score``,
``/rerank`` and ``/pooling`` (openai_embeddings.py, openai_scores.py, openai_pooling.py),
``GET /health``, ``GET /metrics``, and the OIP health endpoints for probes. Errors are
OpenAI's error object with the status that fits: 400 bad input, 404 unknown model or route,
413 body too large, 429 queue full (Retry-After), 503 loading or draining. A client that goes
away is cancelled in the engine (its KV blocks are freed).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .. import __version__
from ..llm.request_stream import Delta, RequestStream, ShuttingDown
from ..metrics import Metrics
from .openai_answer import Choice, choice_doc, prompt_logprobs_doc, usage_doc
from .openai_body import BodyReader
from .openai_embeddings import Pooled, embeddings
from .openai_engine import (
    Served,
    bad_word_ids,
    check_sequences,
    fit,
    markers_kept,
    matchers,
    submit,
    thinks_first,
    truncated,
)
from .openai_errors import ApiError, generation_error
from .openai_lora import ROUTES as LORA_ROUTES
from .openai_lora import adapter_cards, adapter_id
from .openai_lora import load as load_adapter
from .openai_lora import unload as unload_adapter
from .openai_observe import charge_unfinished, count_unfinished, observer
from .openai_pooling import pooling
from .openai_reader import AnswerReader, answer_message, answer_reader
from .openai_reasoning import prompt_opens_think
from .openai_request_id import (
    Trace,
    adopt_body_id,
    begin,
    current_trace,
    end,
    record,
    request_id,
    tag,
)
from .openai_responses import ResponsesRequest, parse_responses, responses_names, sampled_with
from .openai_responses_stream import complete_response
from .openai_responses_stream import stream_response as stream_responses
from .openai_schema import (
    GenerationRequest,
    parse_detokenize,
    parse_request,
    parse_tokenize,
)
from .openai_scores import CLASSIFY_ROUTES, RERANK_ROUTES, SCORE_ROUTES, classify, rerank, score
from .openai_stream import ChunkFormat, stream_response
from .openai_tokens import decode_ids, echo_texts, encode_prompt, prompt_ids
from .request_log import CLIENT_GONE, UNLOGGED

_Route = Callable[[web.BaseRequest, str], Awaitable[web.StreamResponse]]  # (request, path)
_GENERATE = {"/v1/completions": "completions", "/v1/chat/completions": "chat",
             "/v1/responses": "responses"}
# a pooling model's routes -> (the answer, whether a chat's messages may stand for input)
_POOLING: dict[str, tuple[Callable[..., Awaitable[dict[str, Any]]], bool]] = {
    "/v1/embeddings": (embeddings, True), **{r: (classify, True) for r in CLASSIFY_ROUTES},
    **{r: (score, False) for r in SCORE_ROUTES}, **{r: (rerank, False) for r in RERANK_ROUTES},
    "/pooling": (pooling, True)}

_JSON = "application/json"


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(doc, separators=(",", ":")).encode(), status=status,
                        content_type=_JSON)


async def _whole(answer: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """A whole (non-streamed) answer's document; the engine failing it is a 500."""
    try:
        return await answer
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise generation_error(exc) from None


def error_response(exc: ApiError) -> web.Response:
    resp = _json(exc.body(), exc.status)
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(exc.retry_after)
    if exc.close:
        resp.force_close()
    if exc.allow is not None:
        resp.headers["Allow"] = exc.allow  # RFC 9110: a 405 names the methods the route takes
    return resp


class OpenAIServer:
    def __init__(self, model_name: str, metrics: Metrics, max_request_bytes: int,
                 tool_call_parser: str = "none", reasoning_parser: str = "none",
                 log_requests: bool = False, tokens_as_ids: bool = False,
                 max_inflight_bytes: int = 0, model_root: str | None = None) -> None:
        self.model_name = model_name
        self.model_root = model_root  # the base card's root: --model-uri, credentials shed
        self.tokens_as_ids = tokens_as_ids  # return_tokens_as_token_ids' default
        self.log_requests = log_requests  # a record per request (openai_request_id.py)
        self.tool_call_parser = tool_call_parser  # reads tool_choice auto's calls (or none)
        self.reasoning_parser = reasoning_parser  # splits <think> blocks off (or none)
        self.metrics = metrics
        # 413 past max_request_bytes; 503 past max_inflight_bytes of bodies (4x by default)
        self.bodies = BodyReader(max_request_bytes, max_inflight_bytes or 4 * max_request_bytes)
        self.served: Served | None = None
        self.pooled: Pooled | None = None  # an embedding model (--runner pooling) instead
        self.lora_updating = False  # the LoRA load and unload routes are served
        self.unready = False  # SIGTERM: readiness 503, requests served until draining
        self.draining = False  # new requests are refused (503)
        self.inflight = 0
        self.live: set[RequestStream] = set()  # the generations' streams being answered
        self.cutting = False  # the drain timed out: generations end (cut)
        self.created = int(time.time())
        self.server = web.Server(self.handle, access_log=None, handler_cancellation=True)

    # ---- routing ---------------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        trace = begin(request)
        status = 500  # a defect's answer, aiohttp's
        try:
            resp = await self._answer(request, trace)
            status = resp.status
            return resp
        except (asyncio.CancelledError, ConnectionResetError):
            status = CLIENT_GONE  # its generation is cancelled
            if trace.model is not None and trace.finish_reason is None:
                trace.finish_reason = "abort"
            raise
        finally:
            if self.log_requests and request.path not in UNLOGGED:
                record(trace, request.method, request.path, status)
            end(trace)

    async def _answer(self, request: web.BaseRequest, trace: Trace) -> web.StreamResponse:
        try:
            if trace.refusal is not None:
                raise trace.refusal
            resp = await self._route(request)
        except ApiError as exc:
            resp = error_response(exc)
        if not resp.prepared:  # a stream names its request itself, before its headers go
            tag(resp)
        return resp

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        path, method = request.path.rstrip("/") or "/", request.method
        answer = self._post_route(path)
        if answer is not None:
            if method != "POST":
                raise ApiError(405, f"use POST for {path}", allow="POST")
            return await answer(request, path)
        if method not in ("GET", "HEAD"):
            if path in self._get_routes() or path.startswith("/v1/models/"):
                raise ApiError(405, f"no route for {method} {request.path}", allow="GET, HEAD")
            raise ApiError(404, f"no route for {method} {request.path}")
        return self._get(path)

    def _post_route(self, path: str) -> _Route | None:
        """What answers a POST to ``path`` (None: not a POST route)."""
        if path in _GENERATE:
            return self._generate
        if path in ("/tokenize", "/detokenize"):
            return self._tokenize_route
        if path in _POOLING:
            return self._pooling
        if path in LORA_ROUTES and self.lora_updating:
            return self._lora_route
        return None

    @staticmethod
    def _get_routes() -> tuple[str, ...]:
        return ("/health", "/v1/models", "/metrics", "/v2/health/live", "/v2/health/ready",
                "/version")

    def _get(self, path: str) -> web.StreamResponse:
        ready = (self.served or self.pooled) is not None and not (self.draining or self.unready)
        if path == "/health":
            return _json({"status": "ok" if ready else "unavailable"}, 200 if ready else 503)
        if path == "/version":  # vLLM's: the server's version, for clients that log it
            return _json({"version": __version__})
        if path == "/v2/health/live":
            return _json({"live": True})
        if path == "/v2/health/ready":
            return _json({"ready": ready}, 200 if ready else 503)
        if path == "/metrics":
            return web.Response(body=self._render_metrics(), content_type="text/plain",
                                charset="utf-8")
        if path.startswith("/v1/models") and not ready:
            # vLLM answers nothing until its model is loaded; a client listing models to pick
            # one must not take a loading (or draining) server as able to serve it
            raise ApiError(503, f"the model '{self.model_name}' is not ready (loading or "
                           "shutting down)")
        if path == "/v1/models":
            return _json({"object": "list", "data": self._model_cards()})
        if path.startswith("/v1/models/"):
            name = path[len("/v1/models/"):]
            self._check_model(name)
            return _json(next(card for card in self._model_cards() if card["id"] == name))
        raise ApiError(404, f"no route for GET {path}")

    def _model_cards(self) -> list[dict[str, Any]]:
        """The model's card, then its LoRA adapters' (vLLM's: each with its parent)."""
        if self.pooled is not None:
            return [self._model_card()]
        served = self._serving()
        return [self._model_card(), *adapter_cards(served.loras, self.model_name, self.created,
                                                   served.max_model_len)]

    def _model_card(self) -> dict[str, Any]:
        card: dict[str, Any] = {"id": self.model_name, "object": "model",
                                "created": self.created, "owned_by": "kubemaas",
                                "root": self.model_root, "parent": None}  # vLLM's
        loaded = self.served or self.pooled
        if loaded is not None:
            card["max_model_len"] = loaded.max_model_len
        if self.pooled is not None:  # what it is served for: embed, classify, token_classify
            card["task"] = self.pooled.task
        return card

    def _check_model(self, name: str | None) -> int:
        """A request may name the model or one of its LoRA adapters (its id; 0: the model);
        another name is 404."""
        if name is None or name == self.model_name:
            return 0
        found = adapter_id(self.served.loras if self.served else None, name)
        if found is None:
            raise self._unknown_model(name)
        return found

    def _unknown_model(self, name: str) -> ApiError:
        loras = self.served.loras if self.served else None
        adapters = f" and the LoRA adapters {sorted(loras.by_name)}" if loras else ""
        return ApiError(404, f"The model '{name}' does not exist; this server serves "
                        f"'{self.model_name}'{adapters}.", "model", "model_not_found")

    async def _lora_route(self, request: web.BaseRequest, path: str) -> web.Response:
        served = self._serving()
        assert served.loras is not None and served.fetch_adapter is not None
        doc = await self._read_json(request)
        if path == "/v1/load_lora_adapter":
            return await load_adapter(served.loras, doc, served.fetch_adapter, self.model_name)
        return unload_adapter(served.loras, doc)

    async def _pooling(self, request: web.BaseRequest, path: str) -> web.Response:
        if self.pooled is None or self.draining:
            self._serving()  # 503 while loading or draining
            raise ApiError(400, f"the model '{self.model_name}' generates text; {path} is "
                           "answered by an embedding model or a classifier served with "
                           "--runner pooling")
        answer, chat_form = _POOLING[path]
        self.inflight += 1
        try:
            doc = await self._read_json(request)
            chat_ids = None
            if chat_form and isinstance(doc, dict) and doc.get("messages") is not None:
                # vLLM's chat form: the messages rendered (no generation prompt) are the input
                chat = parse_tokenize(doc, generation_default=False)
                chat_ids = await encode_prompt(self.pooled, chat.messages, None,
                                              chat.add_special_tokens, chat.render)
            answered = await (answer(self.pooled, doc, self.model_name) if chat_ids is None
                              else answer(self.pooled, doc, self.model_name, chat_ids))
            trace = current_trace.get()
            if trace is not None:
                trace.model = answered.get("model")
                trace.prompt_tokens = answered["usage"]["prompt_tokens"]
            return _json(answered)
        finally:
            self.inflight -= 1

    def _render_metrics(self) -> bytes:
        body = self.metrics.render()
        if self.pooled is not None:
            embedder, llm = self.pooled.embedder, self.pooled.metrics
            llm.set_engine(embedder.num_waiting, embedder.num_running, 0.0, 0)
            return body + ("\n".join(llm.render_lines()) + "\n").encode()
        if self.served is None:
            return body
        eng, llm = self.served.engine, self.served.metrics
        llm.set_engine(eng.num_waiting, eng.num_running, eng.kv_usage,
                       eng.scheduler.preemptions, eng.peak_running,
                       (eng.pool.queried_tokens, eng.pool.hit_tokens), dict(eng.step_tokens),
                       eng.lanes_bytes)
        if eng.loras is not None:
            llm.set_loras(eng.loras.max_loras, eng.lora_running, eng.lora_waiting)
        return body + ("\n".join(llm.render_lines()) + "\n").encode()

    # ---- generation ------------------------------------------------------------------------
    async def _read_json(self, request: web.BaseRequest) -> Any:
        doc = await self.bodies.read_json(request)
        adopt_body_id(doc, request)
        return doc

    def _serving(self) -> Served:
        if self.pooled is not None and not self.draining:
            raise ApiError(400, f"the model '{self.model_name}' is a pooling model (--runner "
                           f"pooling): it answers {self.pooled.routes()}, not generation")
        if self.served is None or self.draining:
            raise ApiError(503, "the model is loading" if self.served is None else
                           "the server is shutting down", retry_after=1)
        return self.served

    def _tokenizing(self) -> Served | Pooled:
        """The loaded model whose tokenizer /tokenize and /detokenize use (either kind)."""
        return self.pooled if self.pooled is not None and not self.draining else \
            self._serving()

    async def _tokenize_route(self, request: web.BaseRequest, path: str) -> web.Response:
        """vLLM's ``POST /tokenize``: a prompt's (or a chat's) token ids, without generating;
        and its ``POST /detokenize``."""
        if path == "/detokenize":
            return await self._detokenize_route(request)
        served = self._tokenizing()
        req = parse_tokenize(await self._read_json(request))
        self._check_model(req.model)
        ids = await encode_prompt(served, req.messages, req.prompt_text, req.add_special_tokens,
                                 req.render, req.tools)
        strs = served.tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
        return _json({"count": len(ids), "max_model_len": served.max_model_len, "tokens": ids,
                      "token_strs": strs})

    async def _detokenize_route(self, request: web.BaseRequest) -> web.Response:
        """vLLM's ``POST /detokenize``: the text of token ids."""
        served = self._tokenizing()
        model, ids = parse_detokenize(await self._read_json(request), served.vocab_size)
        self._check_model(model)
        return _json({"prompt": await decode_ids(served, ids)})

    async def _generate(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        """Completions, chat or responses (a chat, answered as a Responses object)."""
        kind = _GENERATE[path]
        served = self._serving()
        self.inflight += 1
        try:
            doc = await self._read_json(request)
            responses = parse_responses(doc) if kind == "responses" else None
            with responses_names(responses):  # its errors name its own fields
                req = parse_request(doc if responses is None else responses.chat,
                                    kind != "completions", served.vocab_size, self.tokens_as_ids)
                lora = self._check_model(req.model)
                trace = current_trace.get()
                if trace is not None:
                    trace.model, trace.stream = req.model or self.model_name, req.stream
                if req.tools is not None and req.tools.choice == "auto" and \
                        self.tool_call_parser == "none":
                    raise ApiError(400, "tool_choice \"auto\" (the default when tools are given) "
                                   "needs a tool-call parser, and this model's chat template "
                                   "writes calls in none of the formats the server reads: start "
                                   "it with --tool-call-parser, or send \"required\", a named "
                                   "function or \"none\"", "tool_choice")
                req = markers_kept(req, self.tool_call_parser)
                if req.stream and req.prompt_logprobs:
                    raise ApiError(400, "'prompt_logprobs' is not available with 'stream': true",
                                   "prompt_logprobs")
                check_sequences(served, max(len(req.prompts), 1) * req.n)
                prompts = await prompt_ids(served, req)
                prompts = truncated(served, req, prompts)  # vLLM's truncate_prompt_tokens
                bad_words = bad_word_ids(served, req.bad_words)
                params = [fit(served, req, p, bad_words) for p in prompts]
                grammars = await matchers(served, req, prompts)
                choices = submit(served, req, prompts, params,
                                 await echo_texts(served, req, prompts), grammars, lora)
                self._hold(choices)
                try:
                    if responses is not None:
                        return await self._respond(request, served, req, responses, choices[0])
                    if req.stream:
                        return await self._stream(request, served, req, choices)
                    return _json(await _whole(self._complete(served, req, choices, prompts)))
                finally:
                    self.live.difference_update(c.stream for c in choices)
                    if not all(c.stream.finished for c in choices):  # the client went away (or
                        served.metrics.success.inc((self.model_name, "abort"))  # a write failed)
                        count_unfinished(served.metrics, choices)
                        charge_unfinished(choices)
                    for choice in choices:
                        choice.stream.cancel()  # a no-op when finished; frees the blocks when not
        finally:
            self.inflight -= 1

    def _hold(self, choices: list[Choice]) -> None:
        self.live.update(c.stream for c in choices)
        if self.cutting:  # submitted after the cut
            self.cut()

    def cut(self) -> None:
        """SIGTERM's drain timed out: every generation still running ends now with a 503 (a
        stream with its error event, then [DONE]) and its work stops."""
        self.cutting = True
        for stream in list(self.live):
            stream.fail(ShuttingDown("the server is shutting down"))
        if self.pooled is not None:
            self.pooled.embedder.fail_all(ShuttingDown("the server is shutting down"))

    def _head(self, req: GenerationRequest) -> dict[str, Any]:
        prefix = "chatcmpl-" if req.chat else "cmpl-"
        return {"id": prefix + request_id(), "created": int(time.time()),
                "model": req.model or self.model_name}

    async def _complete(self, served: Served, req: GenerationRequest, choices: list[Choice],
                        prompts: list[list[int]]) -> dict[str, Any]:
        docs, lasts = [], []
        first_deltas: list[Delta] = []
        for choice in choices:  # the choices run together in the engine
            observe = observer(served.metrics, choice, req.n)
            deltas = []
            async for delta in choice.stream:
                observe(delta)
                deltas.append(delta)
            doc = choice_doc(served.tokenizer, req, choice, deltas)
            if req.chat:
                doc["message"], doc["finish_reason"] = answer_message(
                    req, self._reader(served, req, choice.prompt),
                    doc["message"]["content"], doc["finish_reason"])
                if choice.echo_text:  # the continued message, whole
                    doc["message"]["content"] = choice.echo_text + (
                        doc["message"]["content"] or "")
            docs.append(doc)
            lasts.append(deltas[-1])
            first_deltas.append(deltas[0])
        obj = "chat.completion" if req.chat else "text_completion"
        doc = {**self._head(req), "object": obj, "choices": docs,
               "usage": usage_doc(lasts, req.n)}
        if req.chat and req.return_token_ids:
            doc["prompt_token_ids"] = prompts[0]
        if req.chat and req.prompt_logprobs:
            doc["prompt_logprobs"] = prompt_logprobs_doc(served.tokenizer,
                                                         first_deltas[0].prompt_logprobs)
        return doc

    async def _respond(self, request: web.BaseRequest, served: Served, req: GenerationRequest,
                       responses: ResponsesRequest, choice: Choice) -> web.StreamResponse:
        head = ("resp_" + request_id(), int(time.time()), req.model or self.model_name)
        responses = sampled_with(responses, req.params)
        reader = self._reader(served, req, choice.prompt, named=True)
        args = (head, responses, req, choice, observer(served.metrics, choice), reader,
                served.tokenizer)
        if req.stream:
            return await stream_responses(request, *args)
        return _json(await _whole(complete_response(*args)))

    async def _stream(self, request: web.BaseRequest, served: Served, req: GenerationRequest,
                      choices: list[Choice]) -> web.StreamResponse:
        head = self._head(req)
        readers = [self._reader(served, req, c.prompt) for c in choices]
        fmts = [ChunkFormat(head, req, served.tokenizer, c.index, c.prompt, r is not None)
                for c, r in zip(choices, readers, strict=True)]
        observes = [observer(served.metrics, c, req.n) for c in choices]
        return await stream_response(request, req, choices, fmts, observes,
                                     [r for r in readers if r is not None] or None)

    def _reader(self, served: Served, req: GenerationRequest, prompt: list[int],
                named: bool = False) -> AnswerReader | None:
        """What reads a chat choice's text for reasoning and tool calls (None: plain)."""
        if not req.chat:
            return None
        opened = self.reasoning_parser != "none" and prompt_opens_think(served.tokenizer, prompt)
        return answer_reader(req, opened, self.tool_call_parser, self.reasoning_parser, named,
                             thinks_first(served, req))
