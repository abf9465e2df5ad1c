"""OpenAI's Responses API (``POST /v1/responses``), served by the chat path.

A Responses request is turned into the chat-completions body it means (``input`` items into
messages, ``instructions`` into a system message first, flat function tools into chat tools,
``text.format`` into ``response_format``, ``max_output_tokens`` into ``max_tokens``; vLLM's
extra sampling fields pass through), generated as a chat, and its answer written as a
``response`` object: a ``message`` item with the text, a ``function_call`` item per call.

What needs state or OpenAI's hosted services is refused with a 400 that says so (vLLM without
its store answers a ``previous_response_id`` 404, not found): ``previous_response_id`` and
``conversation`` (send the whole conversation in ``input``), ``background``, hosted tools (web
or file search, MCP, …), images and files. The server keeps nothing: a response's ``store`` is
false.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from ..llm.request_stream import Delta
from ..llm.sampling import SamplingParams
from ..request_json import parse_json
from .openai_errors import ApiError
from .openai_errors import bad_request as _bad
from .openai_tools import NAME as _NAME

# the Responses fields the chat body does not take as they are (the rest pass through)
_OWN = ("input", "instructions", "max_output_tokens", "text", "tools", "tool_choice",
        "include", "top_logprobs", "store", "metadata", "truncation", "reasoning",
        "previous_response_id", "conversation", "background", "prompt", "service_tier",
        "stream_options", "prompt_cache_key", "prompt_cache_retention", "safety_identifier",
        "max_tool_calls", "user")
_STATELESS = {"previous_response_id": "this server keeps no responses: send the whole "
              "conversation in 'input'", "conversation": "this server keeps no "
              "conversations: send the whole conversation in 'input'", "prompt": "stored "
              "prompts are OpenAI's: send the text in 'input'"}
_TEXT_PARTS = ("input_text", "output_text", "text")
_REASONING_PARTS = ("reasoning_text", "summary_text")
# reasoning.summary as OpenAI takes it (the Codex CLI sends "auto" with every request that
# carries reasoning): accepted and ignored
_SUMMARIES = (None, "auto", "concise", "detailed", "none")
LOGPROBS = "message.output_text.logprobs"
# asked for by clients that keep no state (the Codex CLI, with store false): accepted and
# ignored, as vLLM does; a reasoning item carries its text, and no encrypted content is made
ENCRYPTED = "reasoning.encrypted_content"


@dataclass(frozen=True)
class ResponsesRequest:
    chat: dict[str, Any]  # the chat-completions body it becomes
    echo: dict[str, Any]  # the settings a response object repeats
    logprobs: bool


def _text(content: Any, where: str, field: str = "content") -> str:
    """A message's content (or a call's output): a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS or \
                    not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(f"{where}.{field}[{j}] is {kind!r}: only text parts "
                           f"({', '.join(_TEXT_PARTS)}) are served", f"{where}.{field}")
            out.append(part["text"])
        return "\n".join(out)  # as vLLM joins a message's text parts
    raise _bad(f"{where}.{field} must be a string or a list of text parts", f"{where}.{field}")


def _call(item: dict[str, Any], where: str) -> dict[str, Any]:
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise _bad(f"{where}.{key} must be a string", f"{where}.{key}")
    try:
        parse_json(item["arguments"] or "{}")
    except ValueError:
        raise _bad(f"{where}.arguments is not valid JSON", f"{where}.arguments") from None
    return {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]}}


def _reasoning(item: dict[str, Any], where: str) -> str:
    """A reasoning item sent back (an earlier answer's thinking): its text."""
    if item.get("encrypted_content"):
        raise _bad(f"{where}.encrypted_content is OpenAI's: send the reasoning's 'content'",
                   f"{where}.encrypted_content")
    parts = item.get("content") or item.get("summary") or []
    if not isinstance(parts, list) or not all(
            isinstance(p, dict) and p.get("type") in _REASONING_PARTS and
            isinstance(p.get("text"), str) for p in parts):
        raise _bad(f"{where}.content must be a list of reasoning_text parts",
                   f"{where}.content")
    return "".join(p["text"] for p in parts)


def _assistant(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message that an output item sent back adds to: the last message when
    it is the assistant's and says nothing yet (its reasoning only), else a new one."""
    last = messages[-1] if messages else None
    if last is None or last["role"] != "assistant" or last["content"] or "tool_calls" in last:
        last = {"role": "assistant", "content": ""}
        messages.append(last)
    return last


def _messages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as chat messages; an answer's items sent back (its
    reasoning, its text, then its function calls) are one assistant message, as chat
    templates expect."""
    instructions = doc.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad("'instructions' must be a string", "instructions")
    messages: list[dict[str, Any]] = \
        [{"role": "system", "content": instructions}] if instructions else []
    raw = doc.get("input")
    if isinstance(raw, str):
        return [*messages, {"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise _bad("'input' must be a string or a non-empty list of items", "input")
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object (an item), got {type(item).__name__}", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise _bad(f"{where}.role must be user, system, developer or assistant",
                           f"{where}.role")
            text = _text(item.get("content"), where)
            if role == "assistant":
                _assistant(messages)["content"] = text
            else:
                messages.append({"role": role, "content": text})
        elif kind == "reasoning":
            messages.append({"role": "assistant", "content": "",
                             "reasoning_content": _reasoning(item, where)})
        elif kind == "function_call":
            last = messages[-1] if messages and messages[-1]["role"] == "assistant" else None
            if last is None:
                last = {"role": "assistant", "content": ""}
                messages.append(last)
            last.setdefault("tool_calls", []).append(_call(item, where))
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"{where}.call_id must be a string", f"{where}.call_id")
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": _text(item.get("output"), where, "output")})
        else:
            raise _bad(f"{where} is {kind!r}: the items served are messages, reasoning, "
                       "function_call and function_call_output", where)
    return messages


def _partial(raw: Any) -> bool:
    """Whether the last input item is an assistant message or reasoning item left
    ``in_progress`` or ``incomplete`` (an answer cut by ``max_output_tokens``, sent back)."""
    last = raw[-1] if isinstance(raw, list) else None
    if not isinstance(last, dict) or last.get("status") not in ("in_progress", "incomplete"):
        return False
    kind = last.get("type", "message")
    return kind == "reasoning" or (kind == "message" and last.get("role") == "assistant")


def _tools(doc: dict[str, Any]) -> dict[str, Any]:
    """Flat function tools and their tool_choice, in the chat body's shape."""
    out: dict[str, Any] = {}
    tools = doc.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("'tools' must be a list", "tools")
        chat_tools = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else None
                raise _bad(f"tools[{i}] is {kind!r}: only function tools are served (web and "
                           "file search, MCP and the other hosted tools are OpenAI's)",
                           f"tools[{i}]")
            if not isinstance(tool.get("name"), str) or not _NAME.match(tool["name"]):
                raise _bad(f"tools[{i}].name must be 1-64 letters, digits, '_', '.' or '-' "
                           "(a Responses tool is flat: {\"type\": \"function\", \"name\", "
                           "\"parameters\"})", f"tools[{i}].name")
            chat_tools.append({"type": "function", "function": {
                k: tool[k] for k in ("name", "description", "parameters") if k in tool}})
        out["tools"] = chat_tools
    choice = doc.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function" and \
            isinstance(choice.get("name"), str):
        choice = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None and choice not in ("none", "auto", "required"):
        raise _bad("'tool_choice' must be \"none\", \"auto\", \"required\" or "
                   "{\"type\": \"function\", \"name\": ...}", "tool_choice")
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _format(doc: dict[str, Any]) -> dict[str, Any] | None:
    """``text.format`` as the chat body's ``response_format``."""
    text = doc.get("text")
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _bad("'text' must be an object: {\"format\": {...}}", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema", {}), dict):
            raise _bad("'text.format.schema' must be a JSON schema (an object)",
                       "text.format.schema")
        return {"type": "json_schema", "json_schema": {
            k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}}
    raise _bad("'text.format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
               "{\"type\": \"json_schema\", \"name\", \"schema\"}", "text.format")


def _refuse(doc: dict[str, Any]) -> None:
    for key, why in _STATELESS.items():
        if doc.get(key) is not None:
            raise _bad(f"'{key}' is not served: {why}", key)
    if doc.get("background"):
        raise _bad("'background' is not served: the answer comes on this request (stream it "
                   "for a long one)", "background")
    if doc.get("truncation") not in (None, "disabled"):
        raise _bad("'truncation' must be \"disabled\": a conversation longer than the "
                   "model's context is a 400, never cut silently (vLLM's "
                   "'truncate_prompt_tokens': -1 keeps the prompt's last tokens that fit)",
                   "truncation")
    reasoning = doc.get("reasoning")
    if reasoning is not None and (not isinstance(reasoning, dict) or
                                  set(reasoning) - {"effort", "summary", "generate_summary"} or
                                  reasoning.get("summary") not in _SUMMARIES or
                                  reasoning.get("generate_summary") not in _SUMMARIES):
        raise _bad("'reasoning' takes an 'effort' (handed to the chat template, as "
                   "reasoning_effort) and a 'summary' of \"auto\", \"concise\", \"detailed\" "
                   "or \"none\", which is accepted and ignored (as vLLM does): no summary is "
                   "written, the thinking itself comes as a reasoning item", "reasoning")
    for key in ("n", "messages", "prompt_logprobs", "echo"):
        if doc.get(key) is not None:
            raise _bad(f"'{key}' is not a Responses field", key)
    metadata = doc.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16 or
                                 not all(isinstance(v, str) for v in metadata.values())):
        raise _bad("'metadata' must be at most 16 string values", "metadata")


def parse_responses(doc: Any) -> ResponsesRequest:
    """A /v1/responses body as the chat body it means (and what its response repeats)."""
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _refuse(doc)
    include = doc.get("include") or []
    if not isinstance(include, list) or any(i not in (LOGPROBS, ENCRYPTED) for i in include):
        raise _bad(f"'include' may only hold {LOGPROBS!r} and {ENCRYPTED!r} here", "include")
    chat = {k: v for k, v in doc.items() if k not in _OWN}
    chat["messages"] = _messages(doc)
    if _partial(doc["input"]):  # vLLM's: an answer cut off, sent back last, is continued
        chat.update(continue_final_message=True, add_generation_prompt=False)
    chat.update(_tools(doc))
    limit = doc.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise _bad("'max_output_tokens' must be an integer >= 1", "max_output_tokens")
        chat["max_tokens"] = limit
    if (doc.get("reasoning") or {}).get("effort") is not None:
        chat["reasoning_effort"] = doc["reasoning"]["effort"]
    response_format = _format(doc)
    if response_format is not None:
        chat["response_format"] = response_format
    logprobs = LOGPROBS in include
    if logprobs:
        if chat.get("tools") and chat.get("tool_choice", "auto") != "none":
            raise _bad("logprobs are served for text answers: leave them out with tools the "
                       "model may call", "include")
        chat["logprobs"] = True
        chat["top_logprobs"] = doc.get("top_logprobs") or 0
    echo = {"instructions": doc.get("instructions"), "metadata": doc.get("metadata") or {},
            "tools": doc.get("tools") or [], "tool_choice": doc.get("tool_choice", "auto"),
            "parallel_tool_calls": doc.get("parallel_tool_calls", True),
            "temperature": doc.get("temperature"), "top_p": doc.get("top_p"),
            "max_output_tokens": doc.get("max_output_tokens"),
            "text": doc.get("text") or {"format": {"type": "text"}},
            "top_logprobs": doc.get("top_logprobs"), "user": doc.get("user"),
            "truncation": "disabled", "store": False, "background": False,
            "previous_response_id": None,
            "reasoning": {"effort": chat.get("reasoning_effort"),
                          "summary": doc["reasoning"].get("summary")}
            if doc.get("reasoning") else None}
    return ResponsesRequest(chat, echo, logprobs)


# the chat body's names in the errors of the chat path, as a Responses request spells them
_PARAM_NAMES = ((re.compile(r"^messages\b.*"), "input"),
                (re.compile(r"^max_tokens$"), "max_output_tokens"),
                (re.compile(r"^response_format\b"), "text.format"),
                (re.compile(r"^reasoning_effort$"), "reasoning.effort"))
_TEXT_NAMES = ((re.compile(r"\bmax_tokens\b"), "max_output_tokens"),
               (re.compile(r"'reasoning_effort'"), "'reasoning.effort'"),
               (re.compile(r"\b(tools\[\d+\])\.function\b"), r"\1"))


def _renamed(text: str, names: tuple[tuple[re.Pattern[str], str], ...]) -> str:
    for pattern, name in names:
        text = pattern.sub(name, text)
    return text


@contextmanager
def responses_names(rreq: ResponsesRequest | None) -> Iterator[None]:
    """A Responses request's errors from the chat path it is served by name its own fields
    (``input``, ``max_output_tokens``, ``text.format``, ``tools[0].parameters``), not the
    chat body's it became (``messages``, ``max_tokens``, ``response_format``, ...)."""
    try:
        yield
    except ApiError as exc:
        if rreq is None:
            raise
        param = _renamed(exc.param, _PARAM_NAMES) if exc.param is not None else None
        raise ApiError(exc.status, _renamed(exc.message, _TEXT_NAMES), param, exc.code,
                       exc.retry_after, exc.close, exc.allow) from None


def sampled_with(rreq: ResponsesRequest, params: SamplingParams) -> ResponsesRequest:
    """The response repeats the temperature and top_p its answer is sampled with, 1.0 when
    the request sent none (as OpenAI and vLLM do), not null."""
    return replace(rreq, echo={**rreq.echo, "temperature": params.temperature,
                               "top_p": params.top_p})


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_doc(rid: str, created: int, model: str, req: ResponsesRequest, status: str,
                 output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``response`` object (``status``: in_progress, completed, incomplete, failed)."""
    return {"id": rid, "object": "response", "created_at": created, "model": model,
            "status": status, "output": output, "usage": usage, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete" else None,
            "completed_at": int(time.time()) if status == "completed" else None, **req.echo}


def responses_usage(last: Delta, reasoning_tokens: int) -> dict[str, Any]:
    return {"input_tokens": last.prompt_tokens,
            "input_tokens_details": {"cached_tokens": last.cached_tokens},
            "output_tokens": last.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": last.prompt_tokens + last.completion_tokens}


def message_item(text: str, status: str, logprobs: list[Any] | None = None,
                 item_id: str | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": [],
                            "logprobs": logprobs or []}
    return {"id": item_id or new_id("msg"), "type": "message", "role": "assistant",
            "status": status, "content": [part]}


def reasoning_item(text: str, status: str) -> dict[str, Any]:
    return {"id": new_id("rs"), "type": "reasoning", "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}]}


def call_item(call: dict[str, Any], status: str, item_id: str | None = None) -> dict[str, Any]:
    return {"id": item_id or new_id("fc"), "type": "function_call", "call_id": call["id"],
            "name": call["function"]["name"], "arguments": call["function"]["arguments"],
            "status": status}


def item_status(finish: str | None) -> str:
    return "incomplete" if finish == "length" else "completed"
