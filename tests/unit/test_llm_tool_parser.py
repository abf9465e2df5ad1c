"""The hermes tool-call parser and the tool-calling request fields, as pure functions."""

from __future__ import annotations

import json

from kubemaas_runtime.protocol.openai_tools import Tools, hermes_calls, tool_message


def test_hermes_blocks_become_calls_and_the_rest_stays_content() -> None:
    text = ('I will look. <tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>'
            '<tool_call>{"name": "b"}</tool_call> done')
    content, calls = hermes_calls(text)
    assert content == "I will look.  done"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] \
        == [("a", {"x": 1}), ("b", {})]
    assert len({c["id"] for c in calls}) == 2
    # a block that is not a call is left as it was; no block: the text unchanged
    assert hermes_calls("<tool_call>{oops}</tool_call>") == ("<tool_call>{oops}</tool_call>", [])
    assert hermes_calls('<tool_call>{"name": 3}</tool_call>')[1] == []
    assert hermes_calls("plain") == ("plain", [])
    assert hermes_calls('<tool_call>{"name": "a"}</tool_call>')[0] is None


def test_a_cut_off_answer_stays_text() -> None:
    tools = Tools(({"type": "function", "function": {"name": "a"}},), "required")
    message, finish = tool_message(tools, "none", '[{"name": "a", "param', "length")
    assert (message["content"], finish) == ('[{"name": "a", "param', "length")
    assert "tool_calls" not in message
    message, finish = tool_message(tools, "none", '[{"name": "a", "parameters": {}}]', "stop")
    assert finish == "tool_calls" and message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "a", "arguments": "{}"}


def test_llama3_json_and_mistral_calls() -> None:
    from kubemaas_runtime.protocol.openai_tools import PARSERS, llama3_calls, mistral_calls
    from kubemaas_runtime.settings import TOOL_CALL_PARSERS

    assert set(TOOL_CALL_PARSERS) == {"none", *PARSERS}
    content, calls = llama3_calls('<|python_tag|>{"name": "a", "parameters": {"x": 1}}; '
                                  '{"name": "b", "parameters": {}}')
    assert content is None
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == \
        [("a", '{"x": 1}'), ("b", "{}")]
    for text in ("Just text.", '{"x": 1}', '{"name": "a"} and more', "{broken"):
        assert llama3_calls(text) == (text, [])
    content, calls = mistral_calls('Sure. [TOOL_CALLS][{"name": "a", "arguments": {"y": 2}}]')
    assert content == "Sure." and calls[0]["function"]["arguments"] == '{"y": 2}'
    content, calls = mistral_calls('[{"name": "a", "arguments": {}}, {"name": "b"}]')
    assert content is None and [c["function"]["name"] for c in calls] == ["a", "b"]
    for text in ("[1, 2]", "[TOOL_CALLS] nope", "plain"):
        assert mistral_calls(text) == (text, [])
