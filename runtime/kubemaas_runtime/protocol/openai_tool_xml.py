"""Tool calls written as XML, the way Qwen3-Coder (and Qwen3.5) write them
(``--tool-call-parser qwen3_coder``)::

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Oslo
    </parameter>
    </function>
    </tool_call>

``XmlCallReader`` reads them delta by delta, with the same events as ``ToolCallReader``: the
content outside the blocks as it comes (only what could start ``<tool_call>`` is held back), a
call as soon as ``<function=NAME>`` is read, and its arguments as a JSON object built
parameter by parameter (``{"city": "Oslo"`` when the first ends, ``, "days": 3`` for the
next, ``}`` at ``</function>``). A value is typed by the tool's parameter schema, as vLLM's
``qwen3_coder`` parser types it: strings as written, integers, numbers and booleans parsed,
objects and arrays read as JSON (or Python literals), ``null`` for the non-string types;
a parameter the schema does not name stays a string. A block that does not open with
``<function=NAME>`` goes back to the content unchanged.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

from .openai_tool_stream import StepReader, held_prefix

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FUNCTION, FUNCTION_END = "<function=", "</function>"
PARAMETER, PARAMETER_END = "<parameter=", "</parameter>"
_HEAD = re.compile(r"\s*<function=([^>\n]+)>")
_STRINGS = ("string", "str", "text", "varchar", "char", "enum")


def typed(value: str, schema: Any) -> Any:
    """A parameter's text as the JSON value its schema asks for (the text when in doubt, and
    when the value has no JSON form: ``nan``, ``1e400``, which Python reads as floats that
    JSON cannot write, as vLLM's parser keeps them)."""
    result = _typed(value, schema)
    try:
        json.dumps(result, allow_nan=False)
    except (ValueError, RecursionError):
        return value
    return result


def _typed(value: str, schema: Any) -> Any:
    if not isinstance(schema, dict):
        return value
    kind = schema.get("type")
    nullable = kind == "null"
    if kind is None and isinstance(schema.get("anyOf"), list):
        kinds = [o.get("type") for o in schema["anyOf"] if isinstance(o, dict)]
        nullable = "null" in kinds
        kind = next((k for k in kinds if k != "null"), "string")
    kind = str(kind or "string").lower()
    if value.lower() in ("null", "none") and (nullable or kind not in _STRINGS):
        return None
    if kind in _STRINGS:
        return value
    try:
        if kind.startswith(("int", "uint", "long")):
            return int(value)
        if kind.startswith(("num", "float")):
            number = float(value)
            return int(number) if number.is_integer() else number
    except ValueError:
        return value
    if kind in ("boolean", "bool"):
        return value.lower() == "true"
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # a model may nest past the parser's depth
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


@dataclass
class XmlCallReader(StepReader):
    """Reads one choice's XML tool calls (and content) from its text, delta by delta
    (states: start | content | head | params | close)."""

    properties: dict[str, dict[str, Any]]  # function name -> its parameters' schemas
    region: int = 0  # where the current block began (released as content if no call)
    params: int = 0  # parameters of the current call sent so far

    @classmethod
    def for_tools(cls, tools: tuple[dict[str, Any], ...]) -> XmlCallReader:
        return cls({t["function"]["name"]: dict(
            (t["function"].get("parameters") or {}).get("properties") or {}) for t in tools})

    # each state's step: True when it moved on, False to wait for text

    def _start(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        self.state = "content"
        return True

    def _content(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        rest = self.text[self.pos:]
        at = rest.find(OPEN)
        if at >= 0:
            before = rest[:at].rstrip()
            self._send_content(events, before)
            self.region = self.pos + len(before)
            self.pos += at + len(OPEN)
            self.state = "head"
            return True
        if final:  # (the spaces after the last call: dropped, as before a call)
            ready = rest.rstrip() if self.calls else rest
        else:
            ready = rest[:len(rest) - held_prefix(rest, (OPEN,))].rstrip()
        self._send_content(events, ready)
        self.pos += len(ready)
        return False

    def _head(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        rest = self.text[self.pos:]
        head = _HEAD.match(rest)
        if head is None:
            stripped = rest.lstrip()
            if not final and (FUNCTION.startswith(stripped[:len(FUNCTION)]) and
                              ">" not in stripped and "\n" not in stripped[len(FUNCTION):]):
                return False  # could still be <function=NAME>
            self._send_content(events, self.text[self.region:self.pos])  # not a call: as written
            self.state = "content"
            return True
        self._announce(events, head.group(1).strip())
        self.pos += head.end()
        self.params = 0
        self.state = "params"
        return True

    def _params(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        rest = self.text[self.pos:]
        body = rest.lstrip()
        skipped = len(rest) - len(body)
        if body.startswith(FUNCTION_END):
            self._send_arguments(events, "{}" if not self.params else "}")
            self.pos += skipped + len(FUNCTION_END)
            self.state = "close"
            return True
        name_end = body.find(">") if body.startswith(PARAMETER) else -1
        end = body.find(PARAMETER_END, name_end) if name_end >= 0 else -1
        if end >= 0:
            name = body[len(PARAMETER):name_end].strip()
            value = body[name_end + 1:end].removeprefix("\n").removesuffix("\n")
            schema = self.properties.get(self.calls[-1]["function"]["name"], {})
            piece = json.dumps(name, ensure_ascii=False) + ": " + json.dumps(
                typed(value, schema.get(name)) if name in schema else value,
                ensure_ascii=False)
            self._send_arguments(events, ("{" if not self.params else ", ") + piece)
            self.params += 1
            self.pos += skipped + end + len(PARAMETER_END)
            return True
        if final:  # the text ends inside the function: the call as far as it is whole
            self._send_arguments(events, "{}" if not self.params else "}")
            self.pos, self.state = len(self.text), "content"
            return True
        if FUNCTION_END.startswith(body) or body.startswith(PARAMETER) or \
                PARAMETER.startswith(body):
            return False  # still being written
        # something else inside the function: the call ends here, the rest is content
        self._send_arguments(events, "{}" if not self.params else "}")
        self.state = "content"
        return True

    def _close(self, events: list[tuple[Any, ...]], final: bool) -> bool:
        body = self.text[self.pos:].lstrip()
        if not final and CLOSE.startswith(body):
            return False
        if body.startswith(CLOSE):
            self.pos = len(self.text) - len(body) + len(CLOSE)
        self.state = "content"
        return True
