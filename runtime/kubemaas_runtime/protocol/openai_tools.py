"""Tool calling on ``/v1/chat/completions``: OpenAI's ``tools`` and ``tool_choice``.

The tools are rendered into the prompt by the model's chat template (``tools=``), and the
conversation may carry the assistant's earlier ``tool_calls`` and the ``tool`` messages that
answer them. What the model writes becomes tool calls as vLLM makes them:

* a named function (``tool_choice: {"type": "function", "function": {"name": …}}``): the output
  is held to that function's parameter schema (a structured output) and is its arguments;
* ``required``: the output is held to a JSON list of ``{"name", "parameters"}`` of the tools
  (one item when ``parallel_tool_calls`` is false), each item a call;
* ``auto`` (the default when tools are given): the model decides, and a parser reads its calls
  from the text; the server must be started with one (``--tool-call-parser``): ``hermes``, the
  ``<tool_call>{"name": …, "arguments": …}</tool_call>`` blocks of Hermes, Qwen2.5 and Qwen3;
  ``llama3_json``, Llama 3.1+'s ``{"name": …, "parameters": …}`` objects (``;``-separated,
  after an optional ``<|python_tag|>``); ``mistral``, Mistral's ``[TOOL_CALLS]`` list of
  ``{"name", "arguments"}`` (the marker is a special token, left out of the text, so a text
  that is such a list is read as calls); ``qwen3_coder``, the XML calls of Qwen3-Coder and
  Qwen3.5 (``<tool_call><function=NAME><parameter=P>value</parameter>…``,
  ``openai_tool_xml.py``); ``pythonic``, the Python list of calls of Llama 3.2 and Llama 4
  (``[get_weather(city="Oslo")]`` as the whole answer, ``openai_tool_pythonic.py``);
* ``none``: plain text.

``finish_reason`` is ``tool_calls`` when calls were made, except for a named function
(``stop``, as OpenAI answers) and an answer cut off by ``max_tokens`` (``length``, its last
call's arguments incomplete, as OpenAI sends them). Streamed, the content comes as it is
written and each call as soon as its name is read, then its arguments token by token
(``openai_tool_stream.py``); the non-streamed answer is read by the same reader.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..llm.structured import Constraint
from ..request_json import parse_json
from .openai_errors import bad_request as _bad
from .openai_render import template_text
from .openai_tool_pythonic import PythonicCallReader
from .openai_tool_stream import SYNTAXES, StepReader, ToolCallReader
from .openai_tool_xml import XmlCallReader

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # a function's name, as OpenAI allows it
MAX_TOOLS = 128
# a template writing earlier calls as a list of ``name(`` (Llama 3.2's and Llama 4's
# pythonic ones: a string ending in ``[`` printed, then each call's name and ``(``)
_PYTHONIC_LIST = re.compile(r"""\[['"]\s*-?\}\}""")
_PYTHONIC_CALL = re.compile(r"""(?:tool_call|function)\.name\s*\+\s*['"]\(""")
PARSERS = ("hermes", "llama3_json", "mistral", "pythonic", "qwen3_coder")  # --tool-call-parser


@dataclass(frozen=True)
class Tools:
    """A chat request's tools: as sent (for the chat template), and what it asks of them."""

    tools: tuple[dict[str, Any], ...]
    choice: str  # none | auto | required | named
    name: str | None = None  # the named function
    parallel: bool = True

    def parameters(self, name: str) -> dict[str, Any]:
        for tool in self.tools:
            if tool["function"]["name"] == name:
                return dict(tool["function"].get("parameters") or {"type": "object"})
        raise KeyError(name)

    @property
    def calls(self) -> bool:
        """The output is read as tool calls (not plain text)."""
        return self.choice != "none"


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function" or \
            not isinstance(tool.get("function"), dict):
        raise _bad(f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}", where)
    fn = tool["function"]
    if not isinstance(fn.get("name"), str) or not NAME.match(fn["name"]):
        raise _bad(f"{where}.function.name must be 1-64 letters, digits, '_', '.' or '-'",
                   where)
    if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
        raise _bad(f"{where}.function.parameters must be a JSON schema object", where)
    if fn.get("description") is not None and not isinstance(fn["description"], str):
        raise _bad(f"{where}.function.description must be a string", where)
    return tool


def _choice(value: Any, names: set[str]) -> tuple[str, str | None]:
    if value in ("none", "auto", "required"):
        return str(value), None
    if isinstance(value, dict) and value.get("type") == "function" and \
            isinstance(value.get("function"), dict):
        name = value["function"].get("name")
        if name not in names:
            raise _bad(f"tool_choice names the function {name!r}, which is not in 'tools'",
                       "tool_choice")
        return "named", str(name)
    raise _bad("'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": "
               "\"function\", \"function\": {\"name\": ...}}", "tool_choice")


def parse_tools(doc: dict[str, Any]) -> Tools | None:
    """A chat body's ``tools``, ``tool_choice`` and ``parallel_tool_calls``."""
    if doc.get("functions") is not None or doc.get("function_call") is not None:
        raise _bad("'functions' and 'function_call' are OpenAI's deprecated names: send "
                   "'tools' and 'tool_choice'", "functions")
    raw = doc.get("tools")
    choice = doc.get("tool_choice")
    if raw is None or raw == []:
        if choice not in (None, "none"):
            raise _bad("'tool_choice' needs 'tools'", "tool_choice")
        return None
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise _bad(f"'tools' must be a list of at most {MAX_TOOLS} functions", "tools")
    tools = tuple(_tool(t, f"tools[{i}]") for i, t in enumerate(raw))
    names = {t["function"]["name"] for t in tools}
    if len(names) != len(tools):
        raise _bad("two tools have the same name", "tools")
    kind, name = _choice("auto" if choice is None else choice, names)
    parallel = doc.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise _bad("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    return Tools(tools, kind, name, parallel)


def tool_constraint(tools: Tools | None) -> Constraint | None:
    """The grammar a named or required tool choice holds the output to."""
    if tools is None or tools.choice not in ("named", "required"):
        return None
    if tools.choice == "named":
        assert tools.name is not None
        return Constraint("json", json.dumps(tools.parameters(tools.name)), "tool_choice")
    defs: dict[str, Any] = {}
    items = []
    for i, tool in enumerate(tools.tools):
        name = tool["function"]["name"]
        parameters: Any = tools.parameters(name)
        rebased = _rebased(parameters, f"#/$defs/tool_{i}")
        if rebased != parameters:  # its "#/..." pointers mean its own root: kept in $defs
            defs[f"tool_{i}"] = rebased
            parameters = {"$ref": f"#/$defs/tool_{i}"}
        items.append({"type": "object", "properties": {"name": {"const": name},
                                                       "parameters": parameters},
                      "required": ["name", "parameters"], "additionalProperties": False})
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
    if not tools.parallel:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return Constraint("json", json.dumps(schema), "tool_choice")


# the keywords whose values are data, not schemas (a "$ref" in them is no reference), and
# those whose values map names (any, "default" too) to schemas
_DATA_KEYWORDS = ("const", "enum", "default", "examples")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _rebased(schema: Any, root: str) -> Any:
    """A tool's parameter schema whose local references (``#``, ``#/$defs/x``, pointers
    into it) point into it where it is kept, ``root`` (a pointer into the whole schema)."""
    if isinstance(schema, list):
        return [_rebased(v, root) for v in schema]
    if not isinstance(schema, dict) or isinstance(schema.get("$id"), str):
        return schema  # (a schema with an $id is its own root: its "#" means itself)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DATA_KEYWORDS:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _rebased(sub, root) for name, sub in value.items()}
        elif key == "$ref" and isinstance(value, str) and (value == "#" or
                                                            value.startswith("#/")):
            out[key] = root + value[1:]
        else:
            out[key] = _rebased(value, root)
    return out


def message_tool_calls(msg: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    """An assistant message's earlier ``tool_calls``, for the chat template: their arguments
    (a JSON string in the API) as objects, which the templates expect."""
    calls = msg.get("tool_calls")
    if calls is None:
        return None
    if not isinstance(calls, list):
        raise _bad(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or \
                not isinstance(fn.get("arguments", ""), str):
            raise _bad(f"{at} must be {{\"id\", \"type\": \"function\", \"function\": "
                       "{\"name\", \"arguments\": a JSON string}}", at)
        try:
            arguments = parse_json(fn.get("arguments") or "{}")
        except ValueError:
            raise _bad(f"{at}.function.arguments is not valid JSON", at) from None
        out.append({"id": call.get("id"), "type": "function",
                    "function": {"name": fn["name"], "arguments": arguments}})
    return out


def tool_reader(tools: Tools, parser: str) -> StepReader | None:
    """The reader of the calls in a required or auto answer's text (None: plain text)."""
    if tools.choice == "required":
        return ToolCallReader(SYNTAXES["required"])
    if tools.choice == "auto" and parser == "qwen3_coder":
        return XmlCallReader.for_tools(tools.tools)
    if tools.choice == "auto" and parser == "pythonic":
        return PythonicCallReader()
    if tools.choice == "auto" and parser in PARSERS:
        return ToolCallReader(SYNTAXES[parser])
    return None


def resolve_parser(setting: str, chat_template: Any) -> str:
    """``--tool-call-parser``, ``auto`` resolved from the chat template: the format in which it
    writes the conversation's earlier calls is the one the model was trained to write."""
    if setting != "auto":
        return setting
    text = template_text(chat_template)
    if "<function=" in text and "<parameter=" in text:
        return "qwen3_coder"
    if "<tool_call>" in text:
        return "hermes"
    if "[TOOL_CALLS]" in text:  # a list of calls, or v11's [TOOL_CALLS]name[ARGS]{...}
        return "mistral"
    if _PYTHONIC_LIST.search(text) and _PYTHONIC_CALL.search(text):
        return "pythonic"
    if "<|start_header_id|>" in text and ("<|python_tag|>" in text or '"parameters"' in text):
        return "llama3_json"
    return "none"


def tool_finish(finish: str | None) -> str | None:
    """The finish reason of an answer that made calls: ``tool_calls`` unless it was cut off."""
    return "tool_calls" if finish == "stop" else finish
