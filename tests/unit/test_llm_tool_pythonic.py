"""The pythonic tool-call reader (Llama 3.2's and Llama 4's ``[name(key=value), …]``) as a
pure function: what it reads from a whole text, that any split reads the same, and how values
become JSON."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.test_llm_tool_parser import assert_every_split_reads, assert_read_alike, read_with

from kubemaas_runtime.protocol.openai_tool_pythonic import PythonicCallReader, literal


def read(text: str, cuts: list[int] | None = None
         ) -> tuple[str, list[tuple[str, str]], list[tuple[Any, ...]]]:
    return read_with(PythonicCallReader(), text, cuts)


CASES = [
    ('[get_weather(city="Oslo", days=3)]', "", [("get_weather", '{"city": "Oslo", "days": 3}')]),
    # several calls, single quotes, nested literals, spaces anywhere
    ("  [ get_weather(city='Lima'),get_time( zone = 'CET' , opts={'dst': True, 'n': [1, 2.5]},"
     " x=None) ]", "", [("get_weather", '{"city": "Lima"}'),
                        ("get_time", '{"zone": "CET", "opts": {"dst": true, "n": [1, 2.5]}, '
                                     '"x": null}')]),
    ("[ping()]", "", [("ping", "{}")]),
    # quotes, commas and brackets inside strings; an escaped quote
    ('[say(text="a, b) ]\\" c", to=\'it\\\'s\')]', "",
     [("say", '{"text": "a, b) ]\\" c", "to": "it\'s"}')]),
    # JSON literals, and a name that is no literal stays its text
    ("[f(a=true, b=null, c=some_variable)]", "",
     [("f", '{"a": true, "b": null, "c": "some_variable"}')]),
    # text after the list is content
    ("[f(a=1)] Done.", " Done.", [("f", '{"a": 1}')]),
    # not calls: prose in brackets, an empty list, a positional argument, text first
    ("[Note: see (below)]", "[Note: see (below)]", []),
    ("[]", "[]", []),
    ("[f(1)]", "[f(1)]", []),
    ("[f(a==1)]", "[f(a==1)]", []),
    ('Sure: [f(a="x")]', 'Sure: [f(a="x")]', []),
    ("Hello", "Hello", []),
    # cut off by max_tokens: the call as far as its values are whole
    ('[f(a="x", b=[1, 2', "", [("f", '{"a": "x"}')]),
    ("[f(a=", "[f(a=", []),
    # a call that goes wrong after its first value ends there; the rest is content
    ('[f(a="x", 7)]', " 7)]", [("f", '{"a": "x"}')]),
]


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_any_split_of_the_text_reads_the_same(text: str, content: str,
                                              calls: list[tuple[str, str]]) -> None:
    assert_every_split_reads(read, text, content, calls)
    for _, arguments in calls:
        json.loads(arguments)


def test_a_call_is_announced_at_its_first_keyword_and_streams_by_value() -> None:
    text = '[get_weather(city="Oslo", days=3)]'
    reader, events, announced_at = PythonicCallReader(), [], None
    for end in range(1, len(text) + 1):
        new = reader.feed(text[end - 1:end])
        if announced_at is None and any(e[0] == "call" for e in new):
            announced_at = end
        events += new
    events += reader.close()
    # the character after "city=" shows it is a keyword (not "=="): the call is announced then
    assert announced_at == text.index("city=") + len("city=") + 1
    assert [e[3] for e in events if e[0] == "call"] == ["get_weather"]
    assert [e[2] for e in events if e[0] == "arguments"] == ['{"city": "Oslo"', ', "days": 3',
                                                             "}"]
    assert not [e for e in events if e[0] == "content"]


def test_prose_in_brackets_is_never_announced() -> None:
    """A call is announced only once ``name(`` is followed by ``key=`` or ``)``."""
    for text in ("[see (this)]", "[a(b c)]", "[x", "[x(y"):
        events = read(text, list(range(1, len(text))))[2]
        assert all(e[0] == "content" for e in events)


def test_values_are_python_or_json_literals_else_their_text() -> None:
    assert literal("'x'") == "x" and json.dumps(literal("(1, 2)")) == "[1, 2]"
    assert literal("1e3") == 1000.0 and literal("-2") == -2
    assert literal("True") is True and literal("false") is False and literal("None") is None
    assert literal("foo") == "foo" and literal("1e999") == "1e999"  # no JSON for infinity
    assert literal("{1, 2}") == "{1, 2}"  # a set has no JSON form


FRAGMENTS = ["[", "]", "(", ")", ",", "=", "==", " ", "f", "city", "get_weather", "'", '"',
             "Oslo", "3", "True", "{", "}", ":", "\\", "text", "\n"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30), st.randoms(use_true_random=False))
def test_any_text_any_split_reads_the_same_and_loses_nothing(parts: list[str],
                                                              rng: random.Random) -> None:
    assert_read_alike(read, "".join(parts), rng, json_arguments=True)
