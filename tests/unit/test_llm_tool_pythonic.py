"""The pythonic tool-call reader (Llama 3.2's and Llama 4's ``[name(key=value), …]``) as a
pure function: what it reads from a whole text, that any split reads the same, and how values
become JSON."""

from __future__ import annotations

import ast
import json
import random
import warnings
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.test_llm_tool_parser import assert_every_split_reads, assert_read_alike, read_with

from kubemaas_runtime.protocol.openai_tool_pystring import decode_body
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
    # cut off by max_tokens: the call as far as its values are whole, a string as written
    ('[f(a="x", b=[1, 2', "", [("f", '{"a": "x"}')]),
    ('[f(a="x", b="Os', "", [("f", '{"a": "x", "b": "Os"}')]),
    ("[f(a='tab\\", "", [("f", '{"a": "tab\\\\"}')]),  # a lone backslash stays one
    # a value that opens with a quote is that string; what follows it is dropped
    ('[f(a="x" "y", b="z".upper())]', "", [("f", '{"a": "x", "b": "z"}')]),
    # escapes decoded as Python decodes them: what JSON needs escaped, escaped again
    ("[f(a='\\x41\\101\\u00e9\\N{GREEK SMALL LETTER ALPHA}\\n\\q\\\\')]", "",
     [("f", json.dumps({"a": "AA\u00e9\u03b1\n\\q\\"}, ensure_ascii=False))]),
    # empty and triple-quoted strings are read whole
    ('[f(a="", b="""x, y""")]', "", [("f", '{"a": "", "b": "x, y"}')]),
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


def test_a_call_is_announced_at_its_first_keyword_and_its_strings_stream() -> None:
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
    # the string as it is written, the number once it ends
    assert [e[2] for e in events if e[0] == "arguments"] == [
        '{"city": "', "O", "s", "l", "o", '"', ', "days": 3', "}"]
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


ESCAPES = ["\\", "n", "x", "4", "1", "0", "u", "00e9", "U", "N", "{", "}", "GREEK SMALL LETTER",
           " ALPHA", "q", "a", "\\\\", '\\"', "\n", "é"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(ESCAPES), max_size=20))
def test_a_string_decodes_as_python_does_and_every_prefix_starts_it(parts: list[str]) -> None:
    """What a string's body decodes to while it is written is always the start of what it
    decodes to whole, and that is what Python makes of the literal (where Python takes it)."""
    raw = "".join(parts)
    whole = decode_body(raw, complete=True)
    for end in range(len(raw)):
        assert whole.startswith(decode_body(raw[:end], complete=False)), raw[:end]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "invalid escape sequence": kept, as we keep it
        try:
            python = ast.literal_eval('"' + raw + '"')
        except (SyntaxError, ValueError):
            return  # a body Python refuses (a bad \N{} name, a closing quote escaped)
    assert whole == python
