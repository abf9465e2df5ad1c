"""Tool calls written as a Python list of calls, the way Llama 3.2 and Llama 4 write them
(``--tool-call-parser pythonic``)::

    [get_weather(city="Oslo", days=3), get_time(zone='CET')]

As vLLM's ``pythonic`` parser reads them, the list must open the answer (after spaces); an
answer that starts otherwise is content. ``PythonicCallReader`` reads it delta by delta with
the same events as the other readers: a call is announced once ``name(`` is followed by its
first keyword (``city=``) or by ``)``, which no prose in brackets is; its arguments stream as a
JSON object, one keyword at a time (``{"city": "Oslo"`` when the first value ends,
``, "days": 3`` for the next, ``}`` at the call's ``)``). A value is a Python literal (strings,
numbers, ``True``/``False``/``None``, lists, dicts, tuples) or a JSON one (``true``,
``null``); anything else stays the string it was written as. A list that does not start with
a call goes back to the content unchanged; text after the list's ``]`` is content.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

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
class PythonicCallReader(StepReader):
    """Reads one choice's pythonic tool calls (and content) from its text, delta by delta
    (states: start | content | item | keyword | value | after)."""

    region: int = 0  # where the list began (released as content if it holds no call)
    region_calls: int = 0
    keywords: int = 0  # keywords of the current call sent so far
    value: _Value | None = None
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
        self._send_content(events, self.text[self.pos:])
        self.pos = len(self.text)
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
        value.scan(self.text)
        if value.end is None:
            if not final:
                return False
            self._end_call(events)  # cut off inside the value
            self.pos, self.state = len(self.text), "content"
            return True
        piece = json.dumps(self.key, ensure_ascii=False) + ": " + json.dumps(
            literal(self.text[value.start:value.end].strip()), ensure_ascii=False)
        self._send_arguments(events, ("{" if not self.keywords else ", ") + piece)
        self.keywords += 1
        self.pos = value.end + (self.text[value.end] == ",")
        self.value = None
        self.state = "keyword"
        return True

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

    def _fail(self, events: list[tuple[Any, ...]]) -> bool:
        """What follows is no call: it is content, and the list's own text before it too
        when the list made no call."""
        if not self.region_calls:
            self._send_content(events, self.text[self.region:self.pos])
        self.state = "content"
        return True
