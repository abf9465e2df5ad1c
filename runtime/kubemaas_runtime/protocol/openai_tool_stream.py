"""Tool calls read from the model's text as it is generated (``tool_choice`` auto, required).

A ``ToolCallReader`` is fed a choice's text delta by delta and says what the client may be
sent so far: content, the start of a call (its id and name) and pieces of the call's
arguments. Content streams until a call may begin: a suffix that could start a call marker
(``<tool_cal``) or trailing whitespace is held back until the next delta tells. A call is
announced once its object's head (``{"name": …, "arguments":``) is read, then the arguments'
raw JSON text streams as it comes, so a client sees a call take shape token by token, as
OpenAI's and vLLM's streams show it. An object that turns out not to be a call (no string
``name``, not JSON) goes back to the content, unchanged. The non-streamed answer is the same
reader fed the whole text, so the two always agree.

The syntaxes (``--tool-call-parser``): ``hermes`` (``<tool_call>{…}</tool_call>`` blocks,
content around them), ``llama3_json`` (the text, after an optional ``<|python_tag|>``, is
``{"name", "parameters"}`` objects joined by ``;``), ``mistral`` (a JSON list of calls after
``[TOOL_CALLS]``, or as the whole text, the marker being a special token that the text leaves
out; or the newer form of Mistral's v11+ tokenizers, ``[TOOL_CALLS]name[ARGS]{…}`` per call);
and ``required``'s own list, which the grammar guarantees.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

# the head of a call object, once the arguments' first character is there
_HEAD = re.compile(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"'
                   r'\s*:\s*(?=\S)')
_ARGUMENT_KEYS = ("arguments", "parameters")
_NAME = re.compile(r"[A-Za-z0-9_.\-]*")  # a function's name, as OpenAI allows it


@dataclass(frozen=True)
class Syntax:
    """Where a model writes its calls."""

    markers: tuple[str, ...] = ()  # each starts a call region anywhere in the content
    starts: tuple[str, ...] = ()  # these start one at the beginning of the text (after spaces)
    consumed: tuple[str, ...] = ()  # of those, the ones that are not part of the calls' JSON
    listed: bool = False  # the region is a JSON list of calls
    separator: str = ""  # between calls not in a list
    closer: str = ""  # after each call (optional)
    args_marker: str = ""  # a call may also be its name, this marker, its arguments' object
    held: bool = False  # a grammar holds the text to calls: a cut one is dropped, not content


SYNTAXES = {
    "hermes": Syntax(markers=("<tool_call>",), closer="</tool_call>"),
    "llama3_json": Syntax(starts=("<|python_tag|>", "{"), consumed=("<|python_tag|>",),
                          separator=";"),
    "mistral": Syntax(markers=("[TOOL_CALLS]",), starts=("[",), listed=True,
                      args_marker="[ARGS]"),
    "required": Syntax(starts=("[",), listed=True, held=True),
}


def tool_call(name: str, arguments: str) -> dict[str, Any]:
    """A call as the API gives it, with a new id."""
    return {"id": "chatcmpl-tool-" + uuid.uuid4().hex, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def held_prefix(text: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could be the start of a marker."""
    longest = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:n]):
                longest = n
                break
    return longest


@dataclass
class _Object:
    """One ``{…}`` being read: where it starts, the JSON scanner's state, its head, its
    arguments' extent."""

    start: int
    scanned: int
    bare: bool = False  # the object is the arguments themselves (no name, no head)
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    value_start: int | None = None  # the arguments' first character, once the head is read
    value_end: int | None = None
    first: str = ""  # the arguments' first character: { [ " or a literal's
    sent: int = 0  # the arguments' characters sent so far (an offset in the text)
    end: int | None = None  # just past the closing brace

    def scan(self, text: str) -> None:
        """Advance over ``text`` (the reader's whole text) until the object ends."""
        pos = self.scanned
        while pos < len(text) and self.end is None:
            char = text[pos]
            pos += 1
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                    self._value_closed(pos, '"')
                continue
            if char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    if self.bare:
                        self.value_end = pos
                    self._literal_ended(text, pos - 1)
                    self.end = pos
                else:
                    self._value_closed(pos, "{[")
            elif char == "," and self.depth == 1:
                self._literal_ended(text, pos - 1)
        self.scanned = pos

    def _value_closed(self, pos: int, openers: str) -> None:
        """A string or container at the object's level closed: the arguments, if they are it."""
        if self.depth == 1 and not self.bare and self.value_start is not None and \
                self.value_end is None and pos > self.value_start + 1 and self.first in openers:
            self.value_end = pos

    def _literal_ended(self, text: str, pos: int) -> None:
        if not self.bare and self.value_start is not None and self.value_end is None and \
                pos >= self.value_start:
            self.value_end = self.value_start + len(text[self.value_start:pos].rstrip())


@dataclass(kw_only=True)
class StepReader:
    """What the call readers share: the text so far, a state stepped until it waits for more
    text, and the events they make: ``("content", text)``, ``("call", index, id, name)``,
    ``("arguments", index, text)``."""

    text: str = ""
    pos: int = 0  # everything before is sent, consumed or skipped
    state: str = "start"  # the step method to run next: _<state>
    calls: list[dict[str, Any]] = field(default_factory=list)
    content: list[str] = field(default_factory=list)

    def feed(self, delta: str, final: bool = False) -> list[tuple[Any, ...]]:
        """The events this delta makes ready (``final``: the text is complete)."""
        self.text += delta
        events: list[tuple[Any, ...]] = []
        while getattr(self, "_" + self.state)(events, final):
            pass
        return events

    def close(self) -> list[tuple[Any, ...]]:
        return self.feed("", final=True)

    def _announce(self, events: list[tuple[Any, ...]], name: str) -> None:
        call = tool_call(name, "")
        self.calls.append(call)
        events.append(("call", len(self.calls) - 1, call["id"], name))

    def _send_arguments(self, events: list[tuple[Any, ...]], text: str) -> None:
        self.calls[-1]["function"]["arguments"] += text
        events.append(("arguments", len(self.calls) - 1, text))

    def _send_content(self, events: list[tuple[Any, ...]], text: str) -> None:
        if text:
            self.content.append(text)
            events.append(("content", text))


@dataclass
class ToolCallReader(StepReader):
    """Reads one choice's JSON tool calls (and content) from its text, delta by delta
    (states: start | content | open | item | object | after)."""

    syntax: Syntax
    region: int = 0  # where the current call region began (released as content if no call)
    region_calls: int = 0
    obj: _Object | None = None

    # each state's step: True when it moved on (to be stepped again), False to wait for text

    def _start(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        rest = self.text[self.pos:].lstrip()
        openers = self.syntax.markers + self.syntax.starts
        if not final and any(len(s) > len(rest) and s.startswith(rest) for s in openers):
            return False  # too little text to tell
        start = next((s for s in openers if rest.startswith(s)), None)
        if start is None or start in self.syntax.markers:
            self.state = "content"
            return True
        self.region, self.region_calls = self.pos, 0
        self.pos = len(self.text) - len(rest)
        if start in self.syntax.consumed:
            self.pos += len(start)
        self.state = "open" if self.syntax.listed else "item"
        return True

    def _content(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        rest = self.text[self.pos:]
        found = [(rest.find(m), m) for m in self.syntax.markers if m in rest]
        if found:
            at, marker = min(found)
            before = rest[:at].rstrip()  # its trailing spaces go back too if no call comes
            self._send_content(events, before)
            self.region, self.region_calls = self.pos + len(before), 0
            self.pos += at + len(marker)
            self.state = "marked"
            return True
        if final:  # (the spaces after the last call: dropped, as before a call)
            self._send_content(events, rest.rstrip() if self.calls else rest)
            self.pos = len(self.text)
            return False
        ready = rest[:len(rest) - held_prefix(rest, self.syntax.markers)].rstrip()
        self._send_content(events, ready)
        self.pos += len(ready)
        return False

    def _marked(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        """After a marker: the calls in the syntax's form, or a name and its arguments."""
        rest = self.text[self.pos:].lstrip()
        if self.syntax.args_marker and rest[:1] not in ("", "["):
            self.state = "named"
        elif not rest and not final:
            return False
        else:
            self.state = "open" if self.syntax.listed else "item"
        return True

    def _named(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        """``name[ARGS]{…}``: the call is announced once its marker is read, then its
        arguments' object streams."""
        rest = self.text[self.pos:]
        at = rest.find(self.syntax.args_marker)
        upto = at if at >= 0 else len(rest) - held_prefix(rest, (self.syntax.args_marker,))
        name = rest[:upto].strip()
        if not _NAME.fullmatch(name) or (at >= 0 and not name) or (at < 0 and final):
            return self._fail(events, self.pos, self.pos)
        if at < 0:
            return False
        head_end = self.pos + at + len(self.syntax.args_marker)
        body = self.text[head_end:].lstrip()
        if not body and not final:
            return False
        if body[:1] != "{":
            return self._fail(events, self.pos, self.pos)
        start = len(self.text) - len(body)
        self._announce(events, name)
        self.obj = _Object(start, start, bare=True, value_start=start, first="{", sent=start)
        self.state = "object"
        return True

    def _open(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        return self._expect("[", "item", events, final)

    def _item(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        rest = self.text[self.pos:].lstrip()
        if not rest and not final:
            return False
        if rest[:1] != "{":
            return self._fail(events, self.pos, self.pos, cut=not rest)
        self.pos = len(self.text) - len(rest)
        self.obj = _Object(self.pos, self.pos)
        self.state = "object"
        return True

    def _object(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        obj = self.obj
        assert obj is not None
        if obj.value_start is None:
            head = _HEAD.match(self.text, obj.start)
            if head is not None:
                obj.value_start = obj.sent = head.end()
                obj.first = self.text[head.end()]
                self._announce(events, json.loads(head.group(1)))
        obj.scan(self.text)
        if obj.value_start is not None:
            self._stream_arguments(events, obj, final)
        if obj.end is None:
            if final and obj.value_start is None:
                return self._fail(events, obj.start, len(self.text), cut=True)
            return False
        self.obj = None
        if obj.value_start is None and not self._whole_call(events, obj):
            return self._fail(events, obj.start, obj.end)
        self.pos = obj.end
        self.region_calls += 1
        self.state = "after"
        return True

    def _after(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        rest = self.text[self.pos:].lstrip()
        if self.syntax.listed:
            if rest[:1] == ",":
                return self._expect(",", "item", events, final)
            return self._expect("]", "content", events, final, fail_to="content")
        if self.syntax.separator:
            if not rest and not final:
                return False
            if rest.startswith(self.syntax.separator):
                return self._expect(self.syntax.separator, "item", events, final)
            self.state = "content"
            return True
        closer = self.syntax.closer
        if not final and closer.startswith(rest):
            return False
        if rest.startswith(closer):
            self.pos = len(self.text) - len(rest) + len(closer)
        self.state = "content"
        return True

    # helpers

    def _expect(self, token: str, then: str, events: list[tuple[Any, ...]], final: bool,
                fail_to: str | None = None) -> bool:
        rest = self.text[self.pos:].lstrip()
        if not rest:
            if not final:
                return False
        elif rest.startswith(token):
            self.pos = len(self.text) - len(rest) + len(token)
            self.state = then
            return True
        if fail_to is not None:
            self.state = fail_to
            return True
        return self._fail(events, self.pos, self.pos, cut=not rest)

    def _fail(self, events: list[tuple[Any, ...]], at: int, end: int, cut: bool = False) -> bool:
        """What was read as calls is not (from ``at`` to ``end``): that text is content, and
        the region's own text before it too when it made no call (a marker, a bracket).
        Where a grammar held the text to calls (``required``), a call the answer's end cut off
        (max_tokens, a stop string: ``cut``), or any failure after calls were read, is
        dropped, not sent as a fragment of JSON (vLLM leaves such content empty)."""
        if self.syntax.held and (self.region_calls or cut):
            self.pos, self.obj, self.state = len(self.text), None, "content"
            return True
        self._send_content(events, self.text[self.region if not self.region_calls else at:end])
        self.pos, self.obj, self.state = end, None, "content"
        return True

    def _whole_call(self, events: list[tuple[Any, ...]], obj: _Object) -> bool:
        """An object whose head was not ``name`` then the arguments: a call if it has a
        string ``name`` (its arguments, if any, re-encoded)."""
        try:
            doc = json.loads(self.text[obj.start:obj.end])
        except (ValueError, RecursionError):  # a model may nest past the parser's depth
            return False
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            return False
        arguments: Any = next((doc[k] for k in _ARGUMENT_KEYS if k in doc), {})
        self._announce(events, doc["name"])
        self._send_arguments(events, json.dumps(arguments, ensure_ascii=False))
        return True

    def _stream_arguments(self, events: list[tuple[Any, ...]], obj: _Object,
                          final: bool) -> None:
        """The arguments read since the last delta (a number or literal only once whole)."""
        upto = obj.value_end if obj.value_end is not None else obj.scanned
        partial_ok = obj.first in '{["' or obj.value_end is not None or final
        if partial_ok and upto > obj.sent:
            self._send_arguments(events, self.text[obj.sent:upto])
            obj.sent = upto


@dataclass
class NamedCall:
    """A named ``tool_choice`` read like the others: the whole text is that function's
    arguments (the grammar holds it to their schema)."""

    name: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    content: list[str] = field(default_factory=list)

    def feed(self, delta: str, final: bool = False) -> list[tuple[Any, ...]]:
        events: list[tuple[Any, ...]] = []
        if not self.calls:
            self.calls.append(tool_call(self.name, ""))
            events.append(("call", 0, self.calls[0]["id"], self.name))
        if delta:
            self.calls[0]["function"]["arguments"] += delta
            events.append(("arguments", 0, delta))
        return events

    def close(self) -> list[tuple[Any, ...]]:
        return self.feed("", final=True)
