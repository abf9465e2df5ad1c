"""The tool-call readers (hermes, llama3_json, mistral, required's list) as pure functions:
what they read from a whole text, and that any split of the text into deltas reads the same."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubemaas_runtime.protocol.openai_reader import answer_message, answer_reader
from kubemaas_runtime.protocol.openai_schema import parse_request
from kubemaas_runtime.protocol.openai_tool_stream import SYNTAXES, StepReader, ToolCallReader
from kubemaas_runtime.protocol.openai_tools import PARSERS, Tools


def tool_message(tools: Tools, parser: str, text: str, finish: str
                 ) -> tuple[dict[str, Any], str | None]:
    """The message a chat answer with ``tools`` makes of ``text`` (no reasoning parser)."""
    req = parse_request({"messages": [{"role": "user", "content": "x"}],
                         "tools": list(tools.tools), "tool_choice": tools.choice}, True, 1024)
    return answer_message(req, answer_reader(req, False, parser, "none"), text, finish)


def read(syntax: str, text: str, cuts: list[int] | None = None
         ) -> tuple[str, list[tuple[str, str]], list[tuple[Any, ...]]]:
    """(content, [(name, arguments)], events) of ``text`` fed whole or cut at ``cuts``."""
    return read_with(ToolCallReader(SYNTAXES[syntax]), text, cuts)


def read_with(reader: StepReader, text: str, cuts: list[int] | None = None
              ) -> tuple[str, list[tuple[str, str]], list[tuple[Any, ...]]]:
    bounds = [0, *(cuts or []), len(text)]
    events = []
    for a, b in itertools.pairwise(bounds):
        events += reader.feed(text[a:b])
    events += reader.close()
    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in reader.calls]
    return "".join(reader.content), calls, events


Read = Callable[[str, "list[int] | None"], tuple[str, list[tuple[str, str]], Any]]


def assert_every_split_reads(read: Read, text: str, content: str,
                             calls: list[tuple[str, str]]) -> None:
    """``text`` reads as ``content`` and ``calls`` whole, a character at a time, and cut at
    twenty random sets of places."""
    assert read(text, None)[:2] == (content, calls)
    assert read(text, list(range(1, len(text))))[:2] == (content, calls)
    rng = random.Random(len(text))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
        assert read(text, cuts)[:2] == (content, calls), cuts


def assert_read_alike(read: Read, text: str, rng: random.Random, json_arguments: bool,
                      held: bool = False) -> None:
    """Whatever the model writes: no exception, the same reading whole and in pieces, when no
    call is read the content is the text itself (``held``, a grammar's call list: or nothing,
    where the text's end cut a call list off), and (``json_arguments``: for the readers that
    build them) every call's arguments valid JSON."""
    whole = read(text, None)
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1))) \
        if len(text) > 1 else []
    assert read(text, cuts)[:2] == whole[:2]
    if not whole[1]:
        assert whole[0] == text or (held and whole[0] == "" and text.lstrip().startswith("["))
    for _, arguments in whole[1] if json_arguments else ():
        json.loads(arguments)


CASES = [
    ("hermes", 'I will look. <tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>'
               '<tool_call>{"name": "b"}</tool_call> done',
     "I will look. done", [("a", '{"x": 1}'), ("b", "{}")]),
    # a block that is not a call stays in the content as it was
    ("hermes", "<tool_call>{oops}</tool_call>", "<tool_call>{oops}</tool_call>", []),
    ("hermes", '<tool_call>{"name": 3}</tool_call>', '<tool_call>{"name": 3}</tool_call>', []),
    ("hermes", "plain, with <tool but no call", "plain, with <tool but no call", []),
    # braces and quotes inside strings; keys after the arguments
    ("hermes", 'x <tool_call>{"name": "a", "arguments": {"s": "}{\\"", "n": [1, {"k": 2}]}, '
               '"z": 1}</tool_call>', "x", [("a", '{"s": "}{\\"", "n": [1, {"k": 2}]}')]),
    ("hermes", '<tool_call>{"arguments": {"y": 2}, "name": "a"}</tool_call>', "",
     [("a", '{"y": 2}')]),
    ("hermes", '<tool_call>{"name": "a", "arguments": 5}</tool_call>', "", [("a", "5")]),
    ("llama3_json", '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; '
                    '{"name": "b", "parameters": {}}', "", [("a", '{"x": 1}'), ("b", "{}")]),
    ("llama3_json", "Just text.", "Just text.", []),
    ("llama3_json", '{"x": 1}', '{"x": 1}', []),
    ("llama3_json", "{broken", "{broken", []),
    ("llama3_json", '{"name": "a"} and more', " and more", [("a", "{}")]),
    ("mistral", 'Sure. [TOOL_CALLS][{"name": "a", "arguments": {"y": 2}}]', "Sure.",
     [("a", '{"y": 2}')]),
    ("mistral", '[TOOL_CALLS][{"name": "a", "arguments": {"y": 2}}]', "", [("a", '{"y": 2}')]),
    ("mistral", '[{"name": "a", "arguments": {}}, {"name": "b"}]', "", [("a", "{}"), ("b", "{}")]),
    ("mistral", "[1, 2]", "[1, 2]", []),
    ("mistral", "[TOOL_CALLS] nope", "[TOOL_CALLS] nope", []),
    # the v11+ form: [TOOL_CALLS]name[ARGS]{...} per call
    ("mistral", 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo", "n": [1, {"k": "}"}]}'
                '[TOOL_CALLS]b[ARGS]{}', "Sure.",
     [("get_weather", '{"city": "Oslo", "n": [1, {"k": "}"}]}'), ("b", "{}")]),
    ("mistral", "[TOOL_CALLS]not a name[ARGS]{}", "[TOOL_CALLS]not a name[ARGS]{}", []),
    ("mistral", "[TOOL_CALLS]a[ARGS] 5", "[TOOL_CALLS]a[ARGS] 5", []),
    ("mistral", "[TOOL_CALLS]get_weather", "[TOOL_CALLS]get_weather", []),
    ("required", '[{"name":"a","parameters":{"city":"Paris","days":3}},'
                 '{"name":"b","parameters":{}}]', "",
     [("a", '{"city":"Paris","days":3}'), ("b", "{}")]),
]


@pytest.mark.parametrize(("syntax", "text", "content", "calls"), CASES)
def test_any_split_of_the_text_reads_the_same(syntax: str, text: str, content: str,
                                              calls: list[tuple[str, str]]) -> None:
    assert_every_split_reads(lambda text, cuts: read(syntax, text, cuts), text, content, calls)


def test_a_call_is_announced_when_its_name_is_read_and_its_arguments_stream() -> None:
    text = 'Hi <tool_call>{"name": "get", "arguments": {"city": "Oslo"}}</tool_call>'
    events = read("hermes", text, list(range(1, len(text))))[2]
    assert events[:2] == [("content", "H"), ("content", "i")]  # the space held, then dropped
    kinds = [e[0] for e in events]
    assert kinds.count("call") == 1 and kinds.index("call") == 2
    assert events[2][1:2] == (0,) and events[2][3] == "get"
    pieces = [e[2] for e in events[3:]]
    assert len(pieces) == len('{"city": "Oslo"}') and "".join(pieces) == '{"city": "Oslo"}'


def test_content_waits_only_for_what_could_start_a_call() -> None:
    reader = ToolCallReader(SYNTAXES["hermes"])
    assert reader.feed("It is <tool") == [("content", "It is")]
    assert reader.feed("kit> here") == [("content", " <toolkit> here")]
    assert reader.close() == []
    llama = ToolCallReader(SYNTAXES["llama3_json"])
    assert llama.feed("  <|python") == []  # may be the tag
    assert llama.feed(" is a language") == [("content", "  <|python is a language")]


def test_a_named_call_streams_its_arguments_once_its_marker_is_read() -> None:
    text = 'Ok[TOOL_CALLS]get[ARGS]{"city": "Oslo"}'
    events = read("mistral", text, list(range(1, len(text))))[2]
    kinds = [e[0] for e in events]
    assert kinds.count("call") == 1 and events[kinds.index("call")][3] == "get"
    pieces = [e[2] for e in events if e[0] == "arguments"]
    assert len(pieces) == len('{"city": "Oslo"}') and "".join(pieces) == '{"city": "Oslo"}'


def test_a_literal_argument_is_sent_whole() -> None:
    text = '[{"name":"a","parameters":12345}]'
    events = read("required", text, list(range(1, len(text))))[2]
    assert [e for e in events if e[0] == "arguments"] == [("arguments", 0, "12345")]


def test_the_answer_of_a_cut_off_call() -> None:
    tools = Tools(({"type": "function", "function": {"name": "a"}},), "required")
    # cut before the arguments began: no call, and no fragment of the grammar's JSON as content
    # (empty, as vLLM's)
    for cut in ('[{"name": "a", "param', '[{"na', "["):
        message, finish = tool_message(tools, "none", cut, "length")
        assert (message["content"], finish) == ("", "length")
        assert "tool_calls" not in message
        assert streamed_message(tools, "none", cut) == (None, [])
    # cut inside the arguments: the call as far as it went, finish "length" (as OpenAI's)
    message, finish = tool_message(tools, "none", '[{"name": "a", "parameters": {"x": 1', "length")
    assert finish == "length" and message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "a", "arguments": '{"x": 1'}
    message, finish = tool_message(tools, "none", '[{"name": "a", "parameters": {}}]', "stop")
    assert finish == "tool_calls" and message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "a", "arguments": "{}"}
    assert message["tool_calls"][0]["id"].startswith("chatcmpl-tool-")


def test_auto_reads_with_the_servers_parser() -> None:
    from kubemaas_runtime.settings import TOOL_CALL_PARSERS

    assert set(TOOL_CALL_PARSERS) == {"auto", "none", *PARSERS}
    tools = Tools(({"type": "function", "function": {"name": "a"}},), "auto")
    text = 'Checking. <tool_call>{"name": "a", "arguments": {"q": "x"}}</tool_call>'
    message, finish = tool_message(tools, "hermes", text, "stop")
    assert finish == "tool_calls" and message["content"] == "Checking."
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"q": "x"}
    message, finish = tool_message(tools, "hermes", "no call here ", "stop")
    assert (message["content"], finish) == ("no call here ", "stop")
    assert "tool_calls" not in message


FRAGMENTS = ['<tool_call>', '</tool_call>', '<tool', '[TOOL_CALLS]', '<|python_tag|>', '{', '}',
             '[', ']', ',', ';', ':', '"', '\\', ' ', '\n', '"name"', '"arguments"',
             '"parameters"', '"a"', '1', 'null', 'text', '{"name": "a", "arguments": ',
             '[ARGS]', '[AR', 'get_x']


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SYNTAXES)), st.lists(st.sampled_from(FRAGMENTS), max_size=30),
       st.randoms(use_true_random=False))
def test_any_text_any_split_reads_the_same_and_loses_nothing(syntax: str, parts: list[str],
                                                              rng: random.Random) -> None:
    # a call cut off by the text's end keeps its arguments as far as they were written
    assert_read_alike(lambda text, cuts: read(syntax, text, cuts), "".join(parts), rng,
                      json_arguments=False, held=SYNTAXES[syntax].held)


@pytest.mark.parametrize(("template", "parser"), [
    # excerpts of the templates as the models ship them: where each writes an earlier call
    ("{%- for tool_call in message.tool_calls %}{{- '<tool_call>\\n{\"name\": \"' }}", "hermes"),
    ({"default": "{{ messages }}", "tool_use": "{{- '<tool_call>\\n' }}"}, "hermes"),
    ("<|start_header_id|>assistant<|end_header_id|>\\n\\n{{- '{\"name\": \"' + "
     "tool_call.name + '\", ' }}{{- '\"parameters\": ' }}", "llama3_json"),
    ("{%- if builtin_tools is defined %}{{- '<|python_tag|>' }}<|start_header_id|>",
     "llama3_json"),
    ("{{- '[AVAILABLE_TOOLS] ' + tools|tojson }}{{- '[TOOL_CALLS] [' }}", "mistral"),
    ("{{- '[TOOL_CALLS]' + tool_call.function.name + '[ARGS]' }}", "mistral"),
    ("{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}{{- '<parameter=' + "
     "args_name + '>\\n' }}", "qwen3_coder"),
    ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}", "none"),
    # Llama 4's and Llama 3.2's pythonic templates: a list of name(key=value)
    ("{{- '<|header_start|>assistant<|header_end|>\\n\\n' -}}{{- \"[\" }}{%- for tool_call in "
     "message.tool_calls %}{{-  tool_call.name + '(' -}}", "pythonic"),
    ("{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n[' -}}{%- for tool_call in "
     "message.tool_calls %}{{- tool_call.name + '(' -}}", "pythonic"),
    # MiniCPM3 writes name(...) in a code block, not a list: no parser of ours reads that
    ("{{- '<|tool_call_start|>\\n```python\\n' }}{{- tool_call.name + '(' }}", "none"),
    (None, "none"),
])
def test_auto_takes_the_parser_the_chat_template_writes(template: object, parser: str) -> None:
    from kubemaas_runtime.protocol.openai_tools import resolve_parser

    assert resolve_parser("auto", template) == parser
    assert resolve_parser("hermes", template) == "hermes"  # a parser named is used as it is


def test_mistral_markers_stay_in_the_text_when_calls_are_read() -> None:
    """Mistral's [TOOL_CALLS] and [ARGS] are special tokens: vLLM keeps special tokens in
    the text for its mistral parser, and so does the runtime, only when it reads calls."""
    from kubemaas_runtime.protocol.openai_engine import markers_kept

    def request(**doc: Any) -> Any:
        return parse_request({"messages": [{"role": "user", "content": "x"}], **doc}, True, 1024)

    tool = {"type": "function", "function": {"name": "a"}}
    assert not markers_kept(request(tools=[tool]), "mistral").params.skip_special_tokens
    for req, parser in ((request(tools=[tool]), "hermes"), (request(), "mistral"),
                        (request(tools=[tool], tool_choice="required"), "mistral")):
        assert markers_kept(req, parser).params.skip_special_tokens


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_a_call_nested_past_the_parsers_depth_is_text(syntax: str) -> None:
    """A model can write brackets deeper than json.loads goes: the text stays content."""
    deep = "[" * 5000 + "]" * 5000
    for text in (f'<tool_call>{{"arguments": {deep}, "name": "f"}}</tool_call>',
                 f'[{{"x": {deep}, "name": "f"}}]', f'{{"x": {deep}}}'):
        content, calls, _ = read(syntax, text)
        assert calls == [] and deep in content, syntax


def streamed_message(tools: Tools, parser: str, text: str) -> tuple[str | None, list[str]]:
    """The content and the calls' arguments a client puts together from ``text`` streamed a
    character at a time."""
    req = parse_request({"messages": [{"role": "user", "content": "x"}],
                         "tools": list(tools.tools), "tool_choice": tools.choice}, True, 1024)
    reader = answer_reader(req, False, parser, "none")
    assert reader is not None
    events = [e for i in range(len(text)) for e in reader.feed(text[i], final=False)]
    events += reader.feed("", final=True)
    content = "".join(e[1] for e in events if e[0] == "content")
    arguments = ["".join(e[2] for e in events if e[0] == "arguments" and e[1] == i)
                 for i in range(sum(e[0] == "call" for e in events))]
    return content or None, arguments


@pytest.mark.parametrize(("parser", "text", "content"), [
    ("hermes", '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n', None),
    ("hermes", '  Sure <tool_call>{"name": "a", "arguments": {}}</tool_call>', "  Sure"),
    ("hermes", 'Sure\n<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
               '<tool_call>{"name": "a", "arguments": {}}</tool_call> \n', "Sure"),
    ("llama3_json", '{"name": "a", "parameters": {}}\n', None),
    ("mistral", '[TOOL_CALLS][{"name": "a", "arguments": {}}]\n', None),
    ("qwen3_coder", "<tool_call>\n<function=a>\n</function>\n</tool_call>\n", None),
    ("pythonic", "[a()]\n", None),
    ("pythonic", "[a()] more \n", " more"),
])
def test_streamed_chunks_add_up_to_the_whole_answer(parser: str, text: str,
                                                     content: str | None) -> None:
    """The spaces after the last call (and before the first) are no content in the whole
    answer and no content delta in the stream (a "\\n" chunk came after the calls)."""
    tools = Tools(({"type": "function", "function": {"name": "a"}},), "auto")
    message, finish = tool_message(tools, parser, text, "stop")
    assert (message["content"], finish) == (content, "tool_calls")
    assert streamed_message(tools, parser, text) == \
        (content, [c["function"]["arguments"] for c in message["tool_calls"]])


def test_a_required_answer_cut_inside_a_later_call_keeps_the_calls_read() -> None:
    """The grammar holds a required answer to a list of calls: a later call cut off before
    its arguments is dropped, not sent as content ('{"name": "a", "param')."""
    tools = Tools(({"type": "function", "function": {"name": "a"}},), "required")
    text = '[{"name": "a", "parameters": {"x": 1}}, {"name": "a", "param'
    message, finish = tool_message(tools, "none", text, "length")
    assert (message["content"], finish) == (None, "length")
    assert [c["function"] for c in message["tool_calls"]] == \
        [{"name": "a", "arguments": '{"x": 1}'}]
    assert streamed_message(tools, "none", text) == (None, ['{"x": 1}'])
    cut = '[{"name": "a", "parameters": {"x": 1}}, '
    assert tool_message(tools, "none", cut, "length")[0]["content"] is None
    assert streamed_message(tools, "none", cut) == (None, ['{"x": 1}'])
