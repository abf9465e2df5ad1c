"""The XML tool-call reader (``qwen3_coder``: Qwen3-Coder's and Qwen3.5's calls) as a pure
function: what it reads from a whole text, that any split reads the same, and that values are
typed by the tool's schema."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.test_llm_tool_parser import assert_every_split_reads, assert_read_alike, read_with

from kubemaas_runtime.protocol.openai_tool_xml import XmlCallReader, typed

TOOLS = ({"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "warm": {"type": "boolean"},
        "scale": {"type": "number"}, "tags": {"type": "array"},
        "note": {"anyOf": [{"type": "null"}, {"type": "string"}]}}}}},)


def read(text: str, cuts: list[int] | None = None
         ) -> tuple[str, list[tuple[str, str]], list[tuple[Any, ...]]]:
    return read_with(XmlCallReader.for_tools(TOOLS), text, cuts)


CALL = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>")
CASES = [
    ("Let me look.\n" + CALL, "Let me look.", [("get_weather", '{"city": "Oslo", "days": 3}')]),
    (CALL + CALL.replace("Oslo", "Lima") + " done", " done",
     [("get_weather", '{"city": "Oslo", "days": 3}'),
      ("get_weather", '{"city": "Lima", "days": 3}')]),
    ("<tool_call>\n<function=get_weather>\n</function>\n</tool_call>", "",
     [("get_weather", "{}")]),
    # typed by the schema; a parameter it does not name stays a string
    ("<tool_call><function=get_weather><parameter=warm>True</parameter><parameter=scale>2.5"
     "</parameter><parameter=tags>[\"a\", 1]</parameter><parameter=note>null</parameter>"
     "<parameter=extra>7</parameter></function></tool_call>", "",
     [("get_weather", '{"warm": true, "scale": 2.5, "tags": ["a", 1], "note": null, '
       '"extra": "7"}')]),
    # not a call: the block stays as written
    ('<tool_call>{"name": "get_weather"}</tool_call>', '<tool_call>{"name": "get_weather"}'
     '</tool_call>', []),
    ("plain <tool but no call", "plain <tool but no call", []),
    # cut off inside the function: the call as far as its parameters are whole
    ("<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n"
     "<parameter=days>\n", "", [("get_weather", '{"city": "Oslo"}')]),
]


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_any_split_of_the_text_reads_the_same(text: str, content: str,
                                              calls: list[tuple[str, str]]) -> None:
    assert_every_split_reads(read, text, content, calls)
    for _, arguments in calls:
        json.loads(arguments)


def test_a_call_is_announced_at_its_function_and_streams_by_parameter() -> None:
    events = read("Hi " + CALL, list(range(1, len(CALL) + 3)))[2]
    kinds = [e[0] for e in events]
    assert kinds[:3] == ["content", "content", "call"] and events[2][3] == "get_weather"
    assert [e[2] for e in events if e[0] == "arguments"] == ['{"city": "Oslo"', ", \"days\": 3",
                                                             "}"]


def test_values_are_typed_as_the_schema_asks() -> None:
    assert typed("12", {"type": "integer"}) == 12
    assert typed("twelve", {"type": "integer"}) == "twelve"  # in doubt: the text
    assert typed("3.0", {"type": "number"}) == 3 and typed("0.5", {"type": "number"}) == 0.5
    assert typed("{'a': 1}", {"type": "object"}) == {"a": 1}  # a Python literal too
    assert typed("null", {"type": "string"}) == "null" and typed("None", {"type": "array"}) \
        is None
    assert typed("x", None) == "x"
    deep = "[" * 5000 + "]" * 5000  # deeper than the parsers go: the text
    assert typed(deep, {"type": "array"}) == deep
    # Python reads these as floats JSON cannot write (they were "Infinity" and "NaN" in
    # arguments that were then no JSON): the text
    for text, kind in (("1e400", "number"), ("nan", "number"), ("-inf", "number"),
                       ('{"a": NaN}', "object"), ("{'a': 1e999}", "object"),
                       ("[1e999]", "array")):
        assert typed(text, {"type": kind}) == text
    text = ("<tool_call><function=get_weather><parameter=scale>nan</parameter></function>"
            "</tool_call>")
    assert json.loads(read(text)[1][0][1]) == {"scale": "nan"}


FRAGMENTS = ["<tool_call>", "</tool_call>", "<tool", "<function=", "get_weather", ">",
             "<parameter=", "city", "days", "</parameter>", "</function>", "\n", " ", "Oslo",
             "3", "<", "=", "{", "text"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30), st.randoms(use_true_random=False))
def test_any_text_any_split_reads_the_same_and_loses_nothing(parts: list[str],
                                                              rng: random.Random) -> None:
    assert_read_alike(read, "".join(parts), rng, json_arguments=True)
