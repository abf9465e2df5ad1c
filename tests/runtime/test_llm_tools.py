"""Tool calling, served: the tools and the conversation's earlier calls reach the prompt
through the model's chat template; a named function or ``required`` holds the output to the
tools' schemas, so even a random-weight model answers with valid calls; ``auto`` reads the
model's ``<tool_call>`` blocks with the hermes parser (and the llama3_json and mistral
parsers theirs); streamed, content and calls come as they are written; the openai client
reads them all."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from . import llm_reference as ref
from .conftest import Server, start_llm_server, stream_events, with_chat_template
from .test_llm_responses import respond, sse
from .tool_models import TEMPLATE, TIME, USER, WEATHER, check_weather


@pytest.fixture(scope="module")
def tool_model(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_chat_template(tiny_llama, tmp_path_factory.mktemp("tools") / "tiny-llama",
                              TEMPLATE)


@pytest.fixture(scope="module")
def server(tool_model: Path) -> Iterator[Server]:
    server = start_llm_server(tool_model)  # --tool-call-parser auto: hermes, from TEMPLATE
    yield server
    assert server.stop() == 0


def chat(server: Server, **doc: Any) -> dict[str, Any]:
    status, body = server.post_json("/v1/chat/completions", {
        "messages": USER, "max_tokens": 64, "temperature": 0, **doc})
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def streamed_calls(events: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]], str]:
    """A stream's content, calls and finish reason, put together as a client does; each call
    starts with a chunk of its index, id, name and empty arguments, which then come in more
    than one piece (the call takes shape token by token)."""
    content, calls, pieces = "", [], []
    for event in events[1:]:
        (choice,) = event["choices"]
        delta = choice["delta"]
        content += delta.get("content") or ""
        for call in delta.get("tool_calls", []):
            if "id" in call:
                assert call["index"] == len(calls) and call["type"] == "function"
                assert call["function"]["arguments"] == ""
                calls.append(call)
                pieces.append(0)
            else:
                assert set(call) == {"index", "function"} and call["index"] == len(calls) - 1
                calls[-1]["function"]["arguments"] += call["function"]["arguments"]
                pieces[-1] += 1
    assert all(n > 1 for n in pieces), pieces
    return content.strip(), calls, events[-1]["choices"][0]["finish_reason"]


def test_the_tools_and_earlier_calls_reach_the_prompt(server: Server, tool_model: Path) -> None:
    history = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call-1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"days\": 2}"}}]},
        {"role": "tool", "tool_call_id": "call-1", "content": "rain"}]
    body = chat(server, messages=history, tools=[WEATHER], tool_choice="none",
                return_token_ids=True, max_tokens=4)
    prompt = ref.load(tool_model)[0].decode(body["prompt_token_ids"])
    assert "<tools>" in prompt and '"get_weather"' in prompt and "The weather in a city" in prompt
    # the earlier call's arguments reach the template as an object, as templates expect
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}' \
        '</tool_call>' in prompt and "<|tool|>\nrain" in prompt
    assert body["choices"][0]["message"].get("tool_calls") is None


def test_a_named_function_is_called_with_valid_arguments(server: Server,
                                                          client: openai.OpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    for temperature in (0, 1.0):
        body = chat(server, tools=[WEATHER, TIME], tool_choice=choice,
                    temperature=temperature, seed=3)
        answer = body["choices"][0]
        assert answer["finish_reason"] == "stop" and answer["message"]["content"] is None
        (call,) = answer["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
        assert call["function"]["name"] == "get_weather"
        check_weather(call["function"]["arguments"])
    parsed: Any = client.chat.completions.create(
        model="tiny", messages=USER, tools=[WEATHER], tool_choice=choice, max_tokens=64,
        temperature=0)
    check_weather(parsed.choices[0].message.tool_calls[0].function.arguments)


def test_required_calls_one_or_more_tools(server: Server) -> None:
    body = chat(server, tools=[WEATHER, TIME], tool_choice="required", temperature=1.0,
                seed=7, n=4, max_tokens=128)
    for answer in body["choices"]:
        if answer["finish_reason"] == "length":
            continue  # a sampled list may run past max_tokens
        assert answer["finish_reason"] == "tool_calls"
        calls = answer["message"]["tool_calls"]
        assert calls
        for call in calls:
            if call["function"]["name"] == "get_weather":
                check_weather(call["function"]["arguments"])
            else:
                assert json.loads(call["function"]["arguments"])["zone"] in ("UTC", "CET")
    one = chat(server, tools=[WEATHER, TIME], tool_choice="required",
               parallel_tool_calls=False)["choices"][0]
    assert one["finish_reason"] == "tool_calls" and len(one["message"]["tool_calls"]) == 1


# a Pydantic-made schema: its "#/$defs/..." references mean its own root; and one that refers
# to its root itself
PLAN = {"type": "function", "function": {"name": "plan_trip", "parameters": {
    "$defs": {"Stop": {"type": "object", "properties": {"city": {"enum": ["Oslo", "Lima"]}},
                       "required": ["city"], "additionalProperties": False}},
    "type": "object", "properties": {"stops": {"type": "array", "items": {"$ref": "#/$defs/Stop"},
                                               "minItems": 1, "maxItems": 2}},
    "required": ["stops"], "additionalProperties": False}}}
TREE = {"type": "function", "function": {"name": "tree", "parameters": {
    "type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"},
                                              "maxItems": 1}},
    "required": ["kids"], "additionalProperties": False}}}


def test_required_takes_tools_whose_schemas_refer_to_their_own_defs(server: Server) -> None:
    """Each tool's schema sits inside the list's: its references still mean its own root."""
    answer = chat(server, tools=[PLAN], tool_choice="required", parallel_tool_calls=False,
                  max_tokens=80)["choices"][0]
    assert answer["finish_reason"] == "tool_calls", answer
    (call,) = answer["message"]["tool_calls"]
    stops = json.loads(call["function"]["arguments"])["stops"]
    assert 1 <= len(stops) <= 2 and all(set(stop) == {"city"} for stop in stops)
    # a schema with an $id is its own root: its references are left as they are
    own = {"type": "function", "function": {"name": "plan_trip", "parameters": {
        "$id": "https://example.com/plan", **PLAN["function"]["parameters"]}}}
    answer = chat(server, tools=[own], tool_choice="required", parallel_tool_calls=False,
                  max_tokens=80)["choices"][0]
    assert answer["finish_reason"] == "tool_calls", answer
    for tools in ([TREE], [PLAN, TREE]):  # a tree may nest past max_tokens
        answer = chat(server, tools=tools, tool_choice="required", parallel_tool_calls=False,
                      max_tokens=80)["choices"][0]
        (call,) = answer["message"]["tool_calls"]
        assert call["function"]["name"] in ("plan_trip", "tree")
        assert call["function"]["arguments"].startswith(("{\"stops\": [{\"city\": ",
                                                         "{\"kids\": ["))


def test_required_calls_stream_as_they_are_written(server: Server, client: openai.OpenAI) -> None:
    doc = {"messages": USER, "tools": [WEATHER, TIME], "tool_choice": "required",
           "temperature": 1.0, "seed": 5, "max_tokens": 128, "logprobs": True}
    whole = chat(server, **doc)["choices"][0]
    events = stream_events(server, "/v1/chat/completions", {**doc, "stream": True})
    content, calls, finish = streamed_calls(events)
    assert (content, finish) == ("", whole["finish_reason"])
    assert [c["function"] for c in calls] == \
        [c["function"] for c in whole["message"]["tool_calls"]]
    # every token's logprobs come too, though the reader holds some of its text back
    streamed = [t for e in events for t in (e["choices"][0]["logprobs"] or {}).get("content", [])]
    assert [t["token"] for t in streamed] == [t["token"] for t in whole["logprobs"]["content"]]
    names, arguments = [], []
    for chunk in client.chat.completions.create(model="tiny", stream=True, **doc):
        for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            if call.function.name:
                names.append(call.function.name)
                arguments.append("")
            arguments[call.index] += call.function.arguments or ""
    assert [{"name": n, "arguments": a} for n, a in zip(names, arguments, strict=True)] == \
        [c["function"] for c in whole["message"]["tool_calls"]]


def test_auto_reads_the_models_tool_call_blocks(server: Server) -> None:
    """The model's own text, read by the hermes parser: held here by a regex to what a tool
    model writes, a sentence and a <tool_call> block; without a block, plain content."""
    block = ('Let me check\\. <tool_call>\\{"name": "get_weather", "arguments": '
             '\\{"city": "(Paris|Lima)", "days": [1-7]\\}\\}</tool_call>')
    answer = chat(server, tools=[WEATHER], structured_outputs={"regex": block},
                  temperature=1.0, seed=1)["choices"][0]
    assert answer["finish_reason"] == "tool_calls"
    assert answer["message"]["content"] == "Let me check."
    (call,) = answer["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    check_weather(call["function"]["arguments"])
    events = stream_events(server, "/v1/chat/completions", {
        "messages": USER, "tools": [WEATHER], "structured_outputs": {"regex": block},
        "temperature": 1.0, "seed": 1, "max_tokens": 64, "stream": True})
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content, calls, finish = streamed_calls(events)
    assert content == "Let me check." and finish == "tool_calls"
    assert [c["function"] for c in calls] == [call["function"]]
    plain = chat(server, tools=[WEATHER], max_tokens=8)["choices"][0]
    assert plain["message"].get("tool_calls") is None and plain["message"]["content"]


def test_auto_keeps_one_call_when_parallel_tool_calls_is_false(server: Server) -> None:
    """The model writes two calls; with parallel_tool_calls false the client gets the first
    only, whole or streamed, on chat and on Responses (vLLM drops the others)."""
    two = ('<tool_call>\\{"name": "get_time", "arguments": \\{"zone": "UTC"\\}\\}</tool_call>'
           '<tool_call>\\{"name": "get_weather", "arguments": \\{"city": "Oslo", "days": 2\\}'
           '\\}</tool_call>')
    doc = {"tools": [WEATHER, TIME], "structured_outputs": {"regex": two}, "max_tokens": 128}
    assert len(chat(server, **doc)["choices"][0]["message"]["tool_calls"]) == 2
    answer = chat(server, **doc, parallel_tool_calls=False)["choices"][0]
    assert answer["finish_reason"] == "tool_calls" and answer["message"]["content"] is None
    assert [c["function"] for c in answer["message"]["tool_calls"]] == \
        [{"name": "get_time", "arguments": '{"zone": "UTC"}'}]
    content, calls, finish = streamed_calls(stream_events(server, "/v1/chat/completions", {
        "messages": USER, "temperature": 0, "stream": True, "parallel_tool_calls": False,
        **doc}))
    assert (content, finish) == ("", "tool_calls")
    assert [c["function"] for c in calls] == [c["function"] for c in
                                             answer["message"]["tool_calls"]]
    flat = [{"type": "function", **t["function"]} for t in (WEATHER, TIME)]
    rdoc = {"input": USER, "tools": flat, "structured_outputs": {"regex": two},
            "max_output_tokens": 128, "parallel_tool_calls": False}
    output = respond(server, **rdoc)["output"]
    assert [(o["type"], o["name"]) for o in output] == [("function_call", "get_time")]
    assert [e["item"]["name"] for e in sse(server, **rdoc)
            if e["type"] == "response.output_item.done"] == ["get_time"]


def items(output: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(o["type"], o["arguments"] if o["type"] == "function_call" else
             o["content"][0]["text"]) for o in output]


@pytest.mark.parametrize(("text", "want"), [
    # a newline after the call: no message item of it (streamed, there was one, "\n")
    ('<tool_call>\\{"name": "get_time", "arguments": \\{"zone": "UTC"\\}\\}</tool_call>\n',
     [("function_call", '{"zone": "UTC"}')]),
    # text after the call: an item after the call's (whole, it was joined to the first one's)
    ('Sure <tool_call>\\{"name": "get_time", "arguments": \\{"zone": "UTC"\\}\\}</tool_call>'
     ' and more', [("message", "Sure"), ("function_call", '{"zone": "UTC"}'),
                   ("message", " and more")]),
    ("\n\n", [("message", "\n\n")]),
])
def test_a_response_has_the_same_items_whole_and_streamed(server: Server, text: str,
                                                          want: list[tuple[str, str]]) -> None:
    doc = {"input": USER, "tools": [{"type": "function", **TIME["function"]}],
           "structured_outputs": {"regex": text}, "max_output_tokens": 96}
    assert items(respond(server, **doc)["output"]) == want
    events = sse(server, **doc)
    assert items(events[-1]["response"]["output"]) == want
    assert items([e["item"] for e in events if e["type"] == "response.output_item.done"]) == \
        want


def test_auto_needs_a_parser(tiny_llama: Path) -> None:
    server = start_llm_server(tiny_llama)
    try:
        status, body = server.post_json("/v1/chat/completions", {
            "messages": USER, "tools": [WEATHER]})
        assert status == 400 and "--tool-call-parser" in body["error"]["message"]
        named = {"type": "function", "function": {"name": "get_weather"}}
        status, body = server.post_json("/v1/chat/completions", {
            "messages": USER, "tools": [WEATHER], "tool_choice": named, "max_tokens": 64,
            "temperature": 0})
        assert status == 200, body
        check_weather(body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    finally:
        assert server.stop() == 0


def test_huge_earlier_calls_are_refused_without_stalling_the_server(server: Server) -> None:
    """An earlier call's 4 MB of arguments: too long to fit, refused before it is rendered and
    tokenized (which took seconds on the event loop, every other request waiting)."""
    arguments = json.dumps({"city": "word " * 800_000})
    history = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather",
                                                      "arguments": arguments}}]}]
    waits: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            started = time.monotonic()
            assert server.request("GET", "/health")[0] == 200
            waits.append(time.monotonic() - started)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        status, body = server.post_json("/v1/chat/completions", {
            "messages": history, "tools": [WEATHER], "max_tokens": 4})
    finally:
        done.set()
        prober.join()
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    assert max(waits) < 1.0, max(waits)


@pytest.mark.parametrize(("doc", "param"), [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0]"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"functions": [WEATHER["function"]]}, "functions"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "response_format"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{nope"}}]}]},
     "messages[0].tool_calls[0]"),
])
def test_bad_tool_requests_are_400(server: Server, doc: dict[str, Any], param: str) -> None:
    status, body = server.post_json("/v1/chat/completions", {"messages": USER, **doc})
    assert status == 400 and body["error"]["param"] == param, body
    status, body = server.post_json("/v1/completions", {"prompt": "hi", "tools": [WEATHER]})
    assert status == 400 and "chat" in body["error"]["message"]


@pytest.mark.parametrize(("parser", "block"), [
    ("llama3_json", '\\{"name": "get_weather", "parameters": \\{"city": "Oslo", "days": 3\\}\\}'),
    ("mistral", '\\[\\{"name": "get_weather", "arguments": \\{"city": "Oslo", "days": 3\\}\\}\\]'),
    ("mistral", '\\[TOOL_CALLS\\]get_weather\\[ARGS\\]\\{"city": "Oslo", "days": 3\\}'),  # v11+
    ("pythonic", '\\[get_weather\\(city="Oslo", days=3\\)\\]'),  # Llama 3.2, Llama 4
    ("qwen3_coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n"
                    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"),
])
def test_auto_with_the_other_parsers(tool_model: Path, parser: str,
                                                 block: str) -> None:
    server = start_llm_server(tool_model, "--tool-call-parser", parser)
    try:
        answer = chat(server, tools=[WEATHER], structured_outputs={"regex": block},
                      max_tokens=200)["choices"][0]
        assert answer["finish_reason"] == "tool_calls" and answer["message"]["content"] is None
        (call,) = answer["message"]["tool_calls"]
        assert call["function"] == {"name": "get_weather",
                                    "arguments": '{"city": "Oslo", "days": 3}'}
        content, calls, finish = streamed_calls(stream_events(
            server, "/v1/chat/completions", {
                "messages": USER, "tools": [WEATHER], "structured_outputs": {"regex": block},
                "temperature": 0, "max_tokens": 200, "stream": True}))
        assert (content, finish) == ("", "tool_calls")
        assert [c["function"] for c in calls] == [call["function"]]
    finally:
        assert server.stop() == 0


def test_a_named_calls_arguments_stream_token_by_token(server: Server,
                                                       client: openai.OpenAI) -> None:
    """Streamed, the first chunk names the call (id, name, empty arguments), then every token
    adds to its arguments; they add up to the non-streamed call's."""
    choice = {"type": "function", "function": {"name": "get_weather"}}
    whole = chat(server, tools=[WEATHER], tool_choice=choice)["choices"][0]
    want = whole["message"]["tool_calls"][0]["function"]["arguments"]
    events = stream_events(server, "/v1/chat/completions", {
        "messages": USER, "tools": [WEATHER], "tool_choice": choice, "temperature": 0,
        "max_tokens": 64, "stream": True})
    deltas = [e["choices"][0]["delta"] for e in events]
    (head,) = deltas[0]["tool_calls"]
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    assert head["index"] == 0 and head["id"].startswith("chatcmpl-tool-")
    pieces = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:] if d]
    assert len(pieces) > 3 and "".join(pieces) == want
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    arguments = ""
    for chunk in client.chat.completions.create(model="tiny", messages=USER, tools=[WEATHER],
                                                tool_choice=choice, max_tokens=64,
                                                temperature=0, stream=True):
        for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            arguments += call.function.arguments or ""
    assert arguments == want


MISTRAL_TEMPLATE = (  # Mistral's v11+ form: the call markers are special tokens
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% for c in m.get('tool_calls', []) %}[TOOL_CALLS]{{ c['function']['name'] }}[ARGS]"
    "{{ c['function']['arguments'] }}{% endfor %}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_mistral_markers_that_are_special_tokens(tmp_path: Path) -> None:
    """[TOOL_CALLS] and [ARGS] as Mistral's tokenizers have them, special tokens: with calls
    to read they stay in the text and the call is read; otherwise they are left out of it, as
    special tokens are."""
    import transformers
    from tokenizers import AddedToken

    from kubemaas_testbed.llm_models import build_llm

    model = build_llm(tmp_path / "mistral", think_tokens=True)  # room for two more tokens
    tok = transformers.AutoTokenizer.from_pretrained(str(model))
    tok.add_tokens([AddedToken(t, special=True, normalized=False)
                    for t in ("[TOOL_CALLS]", "[ARGS]")], special_tokens=True)
    tok.save_pretrained(str(model))
    calls, args = tok.convert_tokens_to_ids(["[TOOL_CALLS]", "[ARGS]"])
    (model / "chat_template.jinja").write_text(MISTRAL_TEMPLATE)
    grammar = (f'start: <[{calls}]> "get_weather" <[{args}]> '
               '"{\\"city\\": \\"Oslo\\", \\"days\\": 3}"')
    server = start_llm_server(model)  # --tool-call-parser auto: mistral, from the template
    try:
        answer = chat(server, tools=[WEATHER], structured_outputs={"grammar": grammar}
                      )["choices"][0]
        assert answer["finish_reason"] == "tool_calls" and answer["message"]["content"] is None
        (call,) = answer["message"]["tool_calls"]
        assert call["function"] == {"name": "get_weather",
                                    "arguments": '{"city": "Oslo", "days": 3}'}
        content, streamed, finish = streamed_calls(stream_events(
            server, "/v1/chat/completions", {
                "messages": USER, "tools": [WEATHER], "structured_outputs": {"grammar": grammar},
                "temperature": 0, "max_tokens": 64, "stream": True}))
        assert (content, finish) == ("", "tool_calls")
        assert [c["function"] for c in streamed] == [call["function"]]
        # no calls to read: the special tokens are left out, as always
        plain = chat(server, tools=[WEATHER], tool_choice="none",
                     structured_outputs={"grammar": grammar})["choices"][0]["message"]
        assert plain["content"] == 'get_weather{"city": "Oslo", "days": 3}'
    finally:
        assert server.stop() == 0
