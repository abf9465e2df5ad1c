"""OpenAI's Responses API, served: a response is the chat answer of the conversation its
``input`` and ``instructions`` mean (greedy answers compared token for token), streamed as
OpenAI's events (read by the openai client's own stream helper), with function calls as
``function_call`` items, ``text.format`` as a structured output, and clean 400s for what needs
OpenAI's store or hosted tools."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from .conftest import Server, start_llm_server, with_chat_template
from .tool_models import TEMPLATE, TIME, USER, WEATHER, check_weather

# the Responses API's flat function tools
FLAT_WEATHER = {"type": "function", **WEATHER["function"]}
FLAT_TIME = {"type": "function", **TIME["function"]}
CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
        "required": ["city"], "additionalProperties": False}


@pytest.fixture(scope="module")
def server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model = with_chat_template(tiny_llama, tmp_path_factory.mktemp("responses") / "tiny-llama",
                               TEMPLATE)
    server = start_llm_server(model)  # hermes, read from the template
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0) as c:
        yield c


def chat_text(server: Server, messages: list[dict[str, Any]], **doc: Any) -> str:
    status, body = server.post_json("/v1/chat/completions", {
        "messages": messages, "temperature": 0, **doc})
    assert status == 200, body
    return str(body["choices"][0]["message"]["content"])


def respond(server: Server, **doc: Any) -> dict[str, Any]:
    status, body = server.post_json("/v1/responses", {"model": "tiny", "temperature": 0, **doc})
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def sse(server: Server, **doc: Any) -> list[dict[str, Any]]:
    """A streamed response's events, each checked to name its type twice, numbered in order."""
    status, headers, raw = server.request("POST", "/v1/responses", json.dumps(
        {"model": "tiny", "temperature": 0, "stream": True, **doc}).encode(),
        {"Content-Type": "application/json"})
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), raw
    events = []
    for block in raw.decode().strip().split("\n\n"):
        kind, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}" and event["sequence_number"] == len(events)
        events.append(event)
    return events


def test_a_response_is_the_chat_answer(server: Server, client: openai.OpenAI) -> None:
    body = respond(server, input="what is the weather in the city", max_output_tokens=12)
    assert body["object"] == "response" and body["id"].startswith("resp_")
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    (item,) = body["output"]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["status"] == "incomplete" and item["content"][0]["type"] == "output_text"
    assert item["content"][0]["text"] == chat_text(server, USER, max_tokens=12)
    usage = body["usage"]
    assert usage["output_tokens"] == 12
    assert usage["total_tokens"] == usage["input_tokens"] + 12
    assert body["store"] is False and body["max_output_tokens"] == 12
    # the openai client reads it; instructions and a list of items make the same conversation
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
               *USER]
    parsed = client.responses.create(
        model="tiny", instructions="be brief", max_output_tokens=16, temperature=0,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
               {"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": "hi"}]},
               {"role": "user", "content": USER[0]["content"]}])
    assert parsed.output_text == chat_text(
        server, [{"role": "system", "content": "be brief"}, *history], max_tokens=16)


def test_a_streamed_response_adds_up_to_the_whole(server: Server, client: openai.OpenAI
                                                  ) -> None:
    whole = respond(server, input="tell me about the city", max_output_tokens=20)
    events = sse(server, input="tell me about the city", max_output_tokens=20)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    text = whole["output"][0]["content"][0]["text"]
    assert len(deltas) > 3 and "".join(deltas) == text
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == text
    assert final["usage"] == whole["usage"]
    # the openai client's stream helper (it wants a completed response: a schema ends it)
    fmt: Any = {"format": {"type": "json_schema", "name": "city", "schema": CITY}}
    want = respond(server, input="which city", text=fmt)["output"][0]["content"][0]["text"]
    with client.responses.stream(model="tiny", input="which city", temperature=0,
                                 text=fmt) as stream:
        pieces = [e.delta for e in stream if e.type == "response.output_text.delta"]
        assert len(pieces) > 1 and "".join(pieces) == want
        assert stream.get_final_response().output_text == want


def test_function_calls_are_items(server: Server, client: openai.OpenAI) -> None:
    named = respond(server, input=USER, tools=[FLAT_WEATHER, FLAT_TIME],
                    tool_choice={"type": "function", "name": "get_weather"},
                    max_output_tokens=64)
    (call,) = named["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert call["id"].startswith("fc_") and call["status"] == "completed"
    check_weather(call["arguments"])
    required = respond(server, input=USER, tools=[FLAT_WEATHER, FLAT_TIME],
                       tool_choice="required", parallel_tool_calls=False, max_output_tokens=64)
    assert [i["type"] for i in required["output"]] == ["function_call"]
    # auto: the model's own <tool_call> block (held to one here by a regex), text before it
    block = ('Let me check\\. <tool_call>\\{"name": "get_weather", "arguments": '
             '\\{"city": "(Paris|Lima)", "days": [1-7]\\}\\}</tool_call>')
    doc = {"input": USER, "tools": [FLAT_WEATHER], "structured_outputs": {"regex": block},
           "temperature": 1.0, "seed": 1, "max_output_tokens": 64}
    auto = respond(server, **doc)
    assert [i["type"] for i in auto["output"]] == ["message", "function_call"]
    assert auto["output"][0]["content"][0]["text"] == "Let me check."
    check_weather(auto["output"][1]["arguments"])
    # streamed: the call's arguments come piece by piece, and add up to the same call
    events = sse(server, **doc)
    pieces = [e["delta"] for e in events
              if e["type"] == "response.function_call_arguments.delta"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert len(pieces) > 3 and "".join(pieces) == auto["output"][1]["arguments"]
    assert [(i["type"], i.get("name")) for i in done] == \
        [("message", None), ("function_call", "get_weather")]
    assert events[-1]["type"] == "response.completed"
    parsed = client.responses.create(model="tiny", input=USER, tools=[FLAT_WEATHER],
                                     tool_choice={"type": "function", "name": "get_weather"},
                                     temperature=0, max_output_tokens=64)
    assert parsed.output[0].type == "function_call"
    check_weather(parsed.output[0].arguments)


def test_earlier_calls_and_their_outputs_reach_the_prompt(server: Server) -> None:
    """function_call and function_call_output items are the assistant's tool_calls and the
    tool messages: the answer equals the chat answer of that conversation."""
    arguments = '{"city": "Oslo", "days": 2}'
    body = respond(server, tools=[FLAT_WEATHER], tool_choice="none", max_output_tokens=16,
                   input=[*USER, {"type": "function_call", "call_id": "call-1",
                                  "name": "get_weather", "arguments": arguments},
                          {"type": "function_call_output", "call_id": "call-1",
                           "output": "rain"}])
    want = chat_text(server, [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call-1", "type": "function", "function": {
            "name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call-1", "content": "rain"}],
        tools=[WEATHER], tool_choice="none", max_tokens=16)
    assert body["output"][0]["content"][0]["text"] == want


def test_text_format_and_logprobs(server: Server) -> None:
    body = respond(server, input="which city", max_output_tokens=32, text={"format": {
        "type": "json_schema", "name": "city", "schema": CITY, "strict": True}})
    assert json.loads(body["output"][0]["content"][0]["text"])["city"] in ("Paris", "Oslo")
    assert body["text"]["format"]["name"] == "city"
    scored = respond(server, input="which city", max_output_tokens=8, top_logprobs=2,
                     include=["message.output_text.logprobs"])
    logprobs = scored["output"][0]["content"][0]["logprobs"]
    assert len(logprobs) == scored["usage"]["output_tokens"] == 8
    assert all(len(lp["top_logprobs"]) == 2 and lp["logprob"] <= 0 for lp in logprobs)
    events = sse(server, input="which city", max_output_tokens=8, top_logprobs=2,
                 include=["message.output_text.logprobs"])
    streamed = [lp for e in events if e["type"] == "response.output_text.delta"
                for lp in e["logprobs"]]
    assert [lp["token"] for lp in streamed] == [lp["token"] for lp in logprobs]


@pytest.mark.parametrize(("doc", "param"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"input": []}, "input"),
    ({"input": [{"role": "bot", "content": "hi"}]}, "input[0].role"),
    ({"reasoning": {"summary": "brief"}}, "reasoning"),
    ({"reasoning": {"effort": "huge"}}, "reasoning.effort"),  # was the chat's reasoning_effort
    ({"truncation": "auto"}, "truncation"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"tools": [FLAT_WEATHER], "include": ["message.output_text.logprobs"]}, "include"),
    ({"tools": [FLAT_WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"text": {"format": {"type": "xml"}}}, "text.format"),
    ({"text": "json"}, "text"),  # was ignored: a plain-text answer
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": "8"}, "max_output_tokens"),
    ({"model": "other"}, "model"),
    ({"n": 2}, "n"),
    ({"echo": True}, "echo"),  # a chat field, which passed through to the chat silently
    # a chat-shaped tool: the 400 named its chat path, tools[0].function.name
    ({"tools": [{"type": "function", "function": {"name": "get_weather"}}]}, "tools[0].name"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": {"a": 1}}]},
     "input[0].output"),
    # the 400 named the chat's messages[2] (the instructions are a message first)
    ({"instructions": "be brief", "input": [{"role": "user", "content": "hi"}, {
        "type": "function_call", "call_id": "c", "name": "f", "arguments": "{nope"}]},
     "input[1].arguments"),
])
def test_what_is_not_served_is_a_clear_400(server: Server, doc: dict[str, Any],
                                           param: str) -> None:
    status, body = server.post_json("/v1/responses", {"model": "tiny", "input": "hi", **doc})
    assert status in (400, 404) and body["error"]["param"] == param, body
    assert "function\": {" not in body["error"]["message"]  # no chat shape in the advice
    assert respond(server, input="hi", max_output_tokens=2)["status"] == "incomplete"


@pytest.mark.parametrize(("doc", "param", "said"), [
    # the prompt too long: the chat's 'messages' and 'max_tokens' were named, and "with
    # max_tokens 0" said of a request that set no limit
    ({"input": "the lazy dog " * 200}, "input", "Shorten the prompt or lower max_output_tokens"),
    ({"input": "hi", "max_output_tokens": 600}, "input", "600 for the completion"),
    # the schema that does not compile: was 'response_format'
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "strng"}}}},
     "text.format", "does not compile"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": 5}}},
     "text.format.schema", "'text.format.schema'"),
    # a flat tool's field: the message said tools[0].function.parameters
    ({"tools": [{"type": "function", "name": "f", "parameters": 5}]}, "tools[0]",
     "tools[0].parameters must be"),
])
def test_errors_name_the_responses_fields(server: Server, client: openai.OpenAI,
                                          doc: dict[str, Any], param: str, said: str) -> None:
    """An error of the chat path a response is served by names the Responses request's own
    fields, read by the openai client as it reads OpenAI's."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", **{"input": "hi", **doc})
    error = caught.value
    assert error.status_code == 400 and error.param == param, error.body
    assert said in error.message and "max_tokens" not in error.message
    assert "messages" not in error.message and ".function." not in error.message


def test_the_sampling_settings_are_repeated(server: Server, client: openai.OpenAI) -> None:
    """A response says the temperature and top_p it was sampled with: 1.0 when the request
    sent none, as OpenAI and vLLM say (it said null), whole and streamed."""
    plain = client.responses.create(model="tiny", input="hi", max_output_tokens=2)
    assert (plain.temperature, plain.top_p) == (1.0, 1.0)
    given = client.responses.create(model="tiny", input="hi", max_output_tokens=2,
                                    temperature=0.5, top_p=0.9)
    assert (given.temperature, given.top_p) == (0.5, 0.9)
    events = list(client.responses.create(model="tiny", input="hi", max_output_tokens=2,
                                          stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    assert all((e.response.temperature, e.response.top_p) == (1.0, 1.0)
               for e in (events[0], events[-1]))


def test_an_answer_cut_off_and_sent_back_is_continued(server: Server,
                                                      client: openai.OpenAI) -> None:
    """As vLLM does, an assistant message sent back last with status incomplete (or
    in_progress) is continued, not followed by a new turn (it was: the template opened
    another assistant turn after it); one that is completed still opens a new turn."""
    first = client.responses.create(model="tiny", input=USER, max_output_tokens=6,
                                    temperature=0)
    assert first.status == "incomplete" and first.output[0].status == "incomplete"
    items: Any = [item.model_dump(exclude_none=True) for item in first.output]
    again = client.responses.create(model="tiny", input=[*USER, *items], max_output_tokens=6,
                                    temperature=0)
    said = [*USER, {"role": "assistant", "content": first.output_text}]
    left_open = {"continue_final_message": True, "add_generation_prompt": False}
    assert again.output_text == chat_text(server, said, max_tokens=6, **left_open)
    _, tokens = server.post_json("/tokenize", {"messages": said, **left_open})
    assert again.usage is not None and again.usage.input_tokens == tokens["count"]
    items[0]["status"] = "completed"
    turn = client.responses.create(model="tiny", input=[*USER, *items], max_output_tokens=2)
    _, tokens = server.post_json("/tokenize", {"messages": said})
    assert turn.usage is not None and turn.usage.input_tokens == tokens["count"]


def test_truncation_auto_names_what_does_it(server: Server) -> None:
    """truncation: auto stays a 400 (a conversation is never cut silently), and its message
    names vLLM's field that keeps the prompt's last tokens, which a Responses request
    passes to the chat path: it answers where the untruncated conversation is a 400."""
    long = "the lazy dog " * 200
    status, body = server.post_json("/v1/responses", {"input": long, "truncation": "auto"})
    assert status == 400 and "'truncate_prompt_tokens': -1" in body["error"]["message"]
    assert respond(server, input=long, max_output_tokens=4,
                   truncate_prompt_tokens=-1)["usage"]["input_tokens"] == 512 - 4
