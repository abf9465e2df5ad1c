"""Tool calls written as a Python list of calls, the way Llama 3.2 and Llama 4 write them
(``--tool-call-parser pythonic``)::

    [get_weather(city="Oslo", days=3), get_time(zone='CET')]

As vLLM's ``pythonic`` parser reads them, the list must open the answer (after spaces); an
answer that starts otherwise is content. ``PythonicCallReader`` reads it delta by delta with
the same events as the other readers: a call is announced once ``name(`` is followed by its
first keyword (``city=``) or by ``)``, which no prose in brackets is; its arguments stream as a
JSON object: a string value character by character as it is written (``{"city": "Os``, then
``lo"``; its escapes decoded, openai_tool_pystring.py), any other value once it ends
(``, "days": 3``), ``}`` at the call's ``)``. A value that opens with a quote is that string
(what follows it before the next ``,`` or ``)`` is dropped); any other is a Python literal
(numbers, ``True``/``False``/``None``, lists, dicts, tuples) or a JSON one (``true``,
``null``), else the text it was written as. A string cut off by the end of the answer is kept
as far as it was written. A list that does not start with a call goes back to the content
unchanged; text after the list's ``]`` is content.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

from .openai_tool_pystring import decode_prefix
from .openai_tool_stream import StepReader

# the heads as read, and what may still become one (``=`` is no keyword's until the next
# character shows it is not ``==``)
_CALL = re.compile(r"\s*([A-Za-z_][\w.\-]*)\s*\(\s*(?=\)|[A-Za-z_]\w*\s*=[^=])")
_CALL_SO_FAR = re.compile(r"\s*(?:[A-Za-z_][\w.\-]*\s*(?:\(\s*(?:[A-Za-z_]\w*\s*=?)?)?)?")
_KEYWORD = re.compile(r"\s*([A-Za-z_]\w*)\s*=(?=[^=])\s*")
_KEYWORD_SO_FAR = re.compile(r"\s*(?:[A-Za-z_]\w*\s*=?)?")


def literal(text: str) -> Any:
    """A keyword's value: the Python or JSON literal it spells, else the text itself."""
    for parse in (ast.literal_eval, json.loads):
        try:
            value = parse(text)
            json.dumps(value, allow_nan=False)
            return value
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
    return text


@dataclass
class _Value:
    """Finds where one keyword's value ends: the ``,`` or ``)`` outside its strings and
    brackets (a scanner that carries on from where the last delta left it)."""

    start: int
    scanned: int
    depth: int = 0
    quote: str = ""
    escaped: bool = False
    end: int | None = None  # the terminator's offset, once read

    def scan(self, text: str) -> None:
        pos = self.scanned
        while pos < len(text) and self.end is None:
            char = text[pos]
            if self.quote:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == self.quote:
                    self.quote = ""
            elif char in "'\"":
                self.quote = char
            elif char in "([{":
                self.depth += 1
            elif self.depth and char in ")]}":
                self.depth -= 1
            elif not self.depth and char in ",)]}":
                self.end = pos
                break
            pos += 1
        self.scanned = pos


@dataclass
class _String:
    """A string value being read: its body's start, where its closing quote is once read."""

    quote: str
    start: int
    scanned: int
    escaped: bool = False
    end: int | None = None
    decoded: int = 0  # where the body's text not yet sent starts (escapes decoded before it)

    def scan(self, text: str) -> None:
        pos = self.scanned
        while pos < len(text) and self.end is None:
            if self.escaped:
                self.escaped = False
            elif text[pos] == "\\":
                self.escaped = True
            elif text[pos] == self.quote:
                self.end = pos
            pos += 1
        self.scanned = pos


def json_body(text: str) -> str:
    """``text`` as the inside of a JSON string (each character escaped on its own, so the
    form of a prefix is a prefix of the form)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


@dataclass
class PythonicCallReader(StepReader):
    """Reads one choice's pythonic tool calls (and content) from its text, delta by delta
    (states: start | content | item | keyword | value | string | tail | after)."""

    region: int = 0  # where the list began (released as content if it holds no call)
    region_calls: int = 0
    keywords: int = 0  # keywords of the current call sent so far
    value: _Value | None = None
    string: _String | None = None
    key: str = ""

    # each state's step: True when it moved on, False to wait for text

    def _start(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        rest = self.text[self.pos:].lstrip()
        if not rest and not final:
            return False
        if rest.startswith("["):
            self.region = self.pos
            self.pos = len(self.text) - len(rest) + 1
            self.state = "item"
        else:
            self.state = "content"
        return True

    def _content(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        rest = self.text[self.pos:]
        ready = rest.rstrip() if self.calls else rest  # (spaces after calls: held, dropped)
        self._send_content(events, ready)
        self.pos += len(ready)
        return False

    def _item(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        rest = self.text[self.pos:]
        head = _CALL.match(rest)
        if head is None:
            if not final and _CALL_SO_FAR.fullmatch(rest):
                return False  # could still be name(keyword=
            return self._fail(events)
        self._announce(events, head.group(1))
        self.pos += head.end()
        self.keywords = 0
        self.state = "keyword"
        return True

    def _keyword(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        rest = self.text[self.pos:]
        body = rest.lstrip()
        if body.startswith(")"):
            self._end_call(events)
            self.pos += len(rest) - len(body) + 1
            self.region_calls += 1
            self.state = "after"
            return True
        keyword = _KEYWORD.match(rest)
        if keyword is None:
            if not final and _KEYWORD_SO_FAR.fullmatch(rest):
                return False
            # cut off, or not a keyword argument: the call as far as it is whole
            self._end_call(events)
            self.state = "content"
            return True
        self.key = keyword.group(1)
        self.pos += keyword.end()
        self.value = _Value(self.pos, self.pos)
        self.state = "value"
        return True

    def _value(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        value = self.value
        assert value is not None
        body = self.text[value.start:].lstrip()
        if body[:1] in ("'", '"'):
            if len(body) < 2 and not final:
                return False  # a string, or the start of an empty or triple-quoted one
            if body[1:2] != body[0]:  # a string: it streams as it is written
                start = len(self.text) - len(body) + 1
                self.string = _String(body[0], start, start)
                self._send_arguments(events, self._key_piece() + '"')
                self.state = "string"
                return True
        value.scan(self.text)
        if value.end is None:
            return self._cut_off(events, final)
        self._send_arguments(events, self._key_piece() + json.dumps(
            literal(self.text[value.start:value.end].strip()), ensure_ascii=False))
        self.keywords += 1
        return self._next_keyword(value.end)

    def _string(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        string = self.string
        assert string is not None
        string.scan(self.text)
        closed = string.end is not None
        start = string.start + string.decoded
        text, used = decode_prefix(self.text[start:string.end if closed else len(self.text)],
                                   closed or final)
        string.decoded += used
        if text:
            self._send_arguments(events, json_body(text))
        if string.end is None:
            if not final:
                return False
            self._send_arguments(events, '"}')  # cut off: the string as far as written
            self.pos, self.state = len(self.text), "content"
            return True
        self._send_arguments(events, '"')
        self.keywords += 1
        self.value = _Value(string.end + 1, string.end + 1)
        self.string = None
        self.state = "tail"
        return True

    def _tail(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        """After a string value, up to its ``,`` or ``)``: skipped."""
        value = self.value
        assert value is not None
        value.scan(self.text)
        if value.end is None:
            return self._cut_off(events, final)
        return self._next_keyword(value.end)

    def _after(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        rest = self.text[self.pos:]
        body = rest.lstrip()
        if not body and not final:
            return False
        if body[:1] in (",", "]"):
            self.pos += len(rest) - len(body) + 1
            self.state = "item" if body[0] == "," else "content"
        else:
            self.state = "content"
        return True

    # helpers

    def _end_call(self, events: list[tuple[Any, ...]]) -> None:
        self._send_arguments(events, "{}" if not self.keywords else "}")

    def _key_piece(self) -> str:
        """The arguments' text before the current keyword's value."""
        return ("{" if not self.keywords else ", ") + json.dumps(self.key, ensure_ascii=False) \
            + ": "

    def _cut_off(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        """A value not ended yet: wait, or (the text over) the call as far as it is whole."""
        if not final:
            return False
        self._end_call(events)
        self.pos, self.state = len(self.text), "content"
        return True

    def _next_keyword(self, end: int) -> bool:
        """The value ended at ``end`` (its ``,`` or the call's ``)``)."""
        self.pos = end + (self.text[end] == ",")
        self.value = None
        self.state = "keyword"
        return True

    def _fail(self, events: list[tuple[Any, ...]]) -> bool:
        """What follows is no call: it is content, and the list's own text before it too
        when the list made no call."""
        if not self.region_calls:
            self._send_content(events, self.text[self.region:self.pos])
        self.state = "content"
        return True
