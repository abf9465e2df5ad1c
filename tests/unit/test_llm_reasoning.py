"""The reasoning splitter and the answer reader as pure functions: a ``<think>`` block goes to
the reasoning, the rest to the content, tool calls are read from the content only, and any
split of the text into deltas reads the same."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubemaas_runtime.protocol.openai_reader import AnswerReader, answer_message, answer_reader
from kubemaas_runtime.protocol.openai_reasoning import ThinkSplitter, resolve_reasoning_parser
from kubemaas_runtime.protocol.openai_schema import parse_request
from kubemaas_runtime.protocol.openai_tool_stream import SYNTAXES, ToolCallReader


def split(text: str, opened: bool = False, cuts: list[int] | None = None
          ) -> tuple[str | None, str]:
    reader = AnswerReader(ThinkSplitter(opened=opened))
    bounds = [0, *(cuts or []), len(text)]
    for a, b in itertools.pairwise(bounds):
        reader.feed(text[a:b], final=b == len(text))
    return reader.reasoning_text(), reader.content()


@pytest.mark.parametrize(("text", "opened", "reasoning", "content"), [
    ("<think>\nthe user asks\n</think>\n\nParis.", False, "\nthe user asks\n", "Paris."),
    ("  <think>a</think>b", False, "a", "b"),
    ("the user asks</think>Paris", True, "the user asks", "Paris"),
    ("Paris.", False, None, "Paris."),
    ("<thinking> is a tag", False, None, "<thinking> is a tag"),
    ("<think>cut off by max_tokens", False, "cut off by max_tokens", ""),
    ("all thought", True, "all thought", ""),
    ("<think></think>Paris", False, None, "Paris"),
    ("<think>x</think>y</think>z", False, "x", "y</think>z"),
])
def test_a_think_block_is_the_reasoning(text: str, opened: bool, reasoning: str | None,
                                        content: str) -> None:
    assert split(text, opened) == (reasoning, content)
    assert split(text, opened, list(range(1, len(text)))) == (reasoning, content)
    rng = random.Random(len(text))
    for _ in range(10):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, 3)))
        assert split(text, opened, cuts) == (reasoning, content)


def test_reasoning_streams_until_the_close_could_begin() -> None:
    reader = AnswerReader(ThinkSplitter())
    assert reader.feed("<thi") == []
    assert reader.feed("nk>let me see </th") == [("reasoning", "let me see ")]
    assert reader.feed("ink>\n") == []
    assert reader.feed("\nIt is ") == [("content", "It is ")]
    assert reader.feed("Oslo.", final=True) == [("content", "Oslo.")]


def test_tool_calls_are_read_from_the_content_only() -> None:
    reader = AnswerReader(ThinkSplitter(), ToolCallReader(SYNTAXES["hermes"]))
    text = ('<think>maybe <tool_call>{"name": "no", "arguments": {}}</tool_call>?</think>\n'
            'Checking. <tool_call>{"name": "get", "arguments": {"q": 1}}</tool_call>')
    events = [e for i in range(len(text)) for e in reader.feed(text[i], i == len(text) - 1)]
    assert reader.reasoning_text() == 'maybe <tool_call>{"name": "no", "arguments": {}}' \
        '</tool_call>?'
    assert [c["function"]["name"] for c in reader.tool_calls] == ["get"]
    assert reader.content() == "Checking."
    kinds = [e[0] for e in events if e[0] != "reasoning"]
    first_call = kinds.index("call")
    assert set(kinds[:first_call]) == {"content"} and set(kinds[first_call + 1:]) == \
        {"arguments"}


def test_the_message_of_a_thinking_answer() -> None:
    req = parse_request({"messages": [{"role": "user", "content": "x"}]}, True, 1024)
    reader = answer_reader(req, False, "none", "qwen3")
    message, finish = answer_message(req, reader, "<think>hm</think>\n\nOslo", "stop")
    assert message == {"role": "assistant", "content": "Oslo", "reasoning_content": "hm",
                       "reasoning": "hm"} and finish == "stop"
    # the template opened the block; cut off while thinking: no content
    reader = answer_reader(req, True, "none", "qwen3")
    message, finish = answer_message(req, reader, "still thinking", "length")
    assert (message["content"], message["reasoning"], finish) == (None, "still thinking",
                                                                  "length")
    # an output held to a grammar from its first token is not inside an opened block
    held = parse_request({"messages": [{"role": "user", "content": "x"}],
                          "response_format": {"type": "json_object"}}, True, 1024)
    message, _ = answer_message(held, answer_reader(held, True, "none", "qwen3"),
                                '{"a": 1}', "stop")
    assert (message["content"], message["reasoning"]) == ('{"a": 1}', None)
    # ... but one held after the reasoning is
    message, _ = answer_message(held, answer_reader(held, True, "none", "qwen3",
                                                    thinks_first=True),
                                'so</think>{"a": 1}', "stop")
    assert (message["content"], message["reasoning"]) == ('{"a": 1}', "so")
    assert answer_reader(req, False, "none", "none") is None


@pytest.mark.parametrize(("template", "parser"), [
    ("{%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}", "qwen3"),
    ("{{'<|Assistant|>'}}{% if add_generation_prompt %}<think>\\n{% endif %}</think>", "qwen3"),
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}", "none"),
    (None, "none"),
])
def test_auto_reads_the_template(template: object, parser: str) -> None:
    assert resolve_reasoning_parser("auto", template) == parser
    assert resolve_reasoning_parser("none", template) == "none"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "<thi", "</", ">", "a", " ", "\n",
                                 "think"]), max_size=20), st.booleans(),
       st.randoms(use_true_random=False))
def test_any_split_reads_the_same_and_loses_only_the_markers(parts: list[str], opened: bool,
                                                             rng: random.Random) -> None:
    text = "".join(parts)
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1))) \
        if len(text) > 1 else []
    whole = split(text, opened)
    assert split(text, opened, cuts) == whole
    reasoning, content = whole
    if reasoning is None and not opened and not text.lstrip().startswith("<think>"):
        assert content == text


class _Grammar:
    """A matcher that allows tokens 3 and 4 (then ends after one token)."""

    def __init__(self) -> None:
        self.taken: list[int] = []

    def compute_bitmask(self) -> bytes:
        return bytes([0b0001_1000, 0, 0, 0])

    def consume_token(self, token: int) -> bool:
        self.taken.append(token)
        return token in (3, 4)

    def is_stopped(self) -> bool:
        return bool(self.taken)

    def get_error(self) -> str:
        return "refused"


def test_a_grammar_holds_after_the_thinking() -> None:
    from kubemaas_runtime.llm.structured import AfterThinking, allowed_tokens

    def allowed(gate: AfterThinking) -> list[int] | None:
        mask = allowed_tokens(gate, 32)
        return None if mask is None else mask.nonzero().flatten().tolist()

    # the first token may open a block (<think> = 9) or start the answer
    gate = AfterThinking(_Grammar(), 9, 10, opened=False)
    assert allowed(gate) == [3, 4, 9]
    assert gate.consume_token(9) and gate.matcher.taken == []
    for token in (20, 21, 10):  # free while thinking, up to and with </think>
        assert allowed(gate) is None and not gate.is_stopped()
        assert gate.consume_token(token)
    assert allowed(gate) == [3, 4] and gate.consume_token(4) and gate.is_stopped()
    assert gate.matcher.taken == [4]
    # no block: the grammar holds from the first token
    gate = AfterThinking(_Grammar(), 9, 10, opened=False)
    assert gate.consume_token(3) and allowed(gate) == [3, 4] and gate.matcher.taken == [3]
    assert not AfterThinking(_Grammar(), 9, 10, opened=False).consume_token(7)
    # a block the prompt opened: free until </think>
    gate = AfterThinking(_Grammar(), 9, 10, opened=True)
    assert allowed(gate) is None and gate.consume_token(9) and allowed(gate) is None
    assert gate.consume_token(10) and allowed(gate) == [3, 4]


def test_think_tokens_are_found_when_each_is_one_token() -> None:
    from kubemaas_runtime.protocol.openai_reasoning import think_token_ids

    class Tok:
        def __init__(self, vocab: dict[str, list[int]]) -> None:
            self.vocab = vocab

        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            return self.vocab[text]

    assert think_token_ids(Tok({"<think>": [7], "</think>": [8]})) == (7, 8)
    assert think_token_ids(Tok({"<think>": [7], "</think>": [1, 2, 3]})) is None


def test_the_reasoning_tokens_are_those_up_to_the_end_of_the_block() -> None:
    req = parse_request({"messages": [{"role": "user", "content": "x"}]}, True, 1024)
    deltas = [("<think>", 1), ("so", 1), ("", 1), ("\ufffd", 1), ("</think>\n\nO", 1),
              ("slo", 1), ("", 1)]  # an incomplete character, an end token
    reader = answer_reader(req, False, "none", "qwen3")
    assert reader is not None
    for text, _ in deltas:
        reader.feed(text)
    reader.feed("", final=True)
    pieces = [(len(text), tokens) for text, tokens in deltas]
    assert reader.reasoning_tokens(pieces) == 5
    plain = answer_reader(req, False, "none", "qwen3")
    assert plain is not None
    plain.feed("Oslo", final=True)
    assert plain.reasoning_tokens([(4, 2), (0, 1)]) == 0
    left_open = answer_reader(req, True, "none", "qwen3")  # the prompt opened the block
    assert left_open is not None
    left_open.feed("still", final=True)
    assert left_open.reasoning_tokens([(2, 1), (3, 1)]) == 2


def test_a_thinking_budget_forces_the_end_of_the_block() -> None:
    from kubemaas_runtime.llm.structured import AfterThinking, allowed_tokens

    gate = AfterThinking(None, 9, 20, opened=True, budget=2)  # no grammar, a budget only
    for token in (5, 6):
        assert allowed_tokens(gate, 32) is None and gate.consume_token(token)
    mask = allowed_tokens(gate, 32)
    assert mask is not None and mask.nonzero().flatten().tolist() == [20]
    assert gate.consume_token(20) and allowed_tokens(gate, 32) is None
    assert gate.consume_token(7) and not gate.is_stopped()  # the answer: free, never "done"
    first = AfterThinking(None, 9, 20, opened=False, budget=0)
    assert allowed_tokens(first, 32) is None and first.consume_token(9)
    mask = allowed_tokens(first, 32)
    assert mask is not None and mask.nonzero().flatten().tolist() == [20]


def test_an_xml_call_inside_the_block_ends_the_reasoning() -> None:
    """Qwen3.5 may write its call before closing the block; with the qwen3_coder parser the
    call ends the reasoning (as vLLM's qwen3 parser reads it) and is read as a call; a mere
    mention of the tag does not end it."""
    from kubemaas_runtime.protocol.openai_tool_xml import XmlCallReader

    tools = ({"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"days": {"type": "integer"}}}}},)
    text = ("I should use <tool_call> here.\n<tool_call>\n<function=get_weather>\n"
            "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>")
    for cuts in ([], list(range(1, len(text))),
                 sorted(random.Random(1).sample(range(1, len(text)), 9))):
        reader = AnswerReader(ThinkSplitter(opened=True, calls_end_it=True),
                              XmlCallReader.for_tools(tools))
        for a, b in itertools.pairwise([0, *cuts, len(text)]):
            reader.feed(text[a:b], final=b == len(text))
        assert reader.reasoning_text() == "I should use <tool_call> here.\n", cuts
        assert [c["function"]["arguments"] for c in reader.tool_calls] == ['{"days": 3}']
        assert reader.content() == ""
    # without the XML parser, the block runs to </think> as before
    plain = AnswerReader(ThinkSplitter(opened=True))
    plain.feed(text, final=True)
    assert plain.reasoning_text() == text
    req = parse_request({"messages": [{"role": "user", "content": "x"}], "tools": list(tools)},
                        True, 1024)
    message, finish = answer_message(req, answer_reader(req, True, "qwen3_coder", "qwen3"),
                                     text, "stop")
    assert finish == "tool_calls" and message["content"] is None
    assert message["reasoning"] == "I should use <tool_call> here.\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<tool_call>", "<tool", "<function=", "<func", "f>",
                                 "</think>", "\n", " ", "a"]), max_size=20),
       st.randoms(use_true_random=False))
def test_calls_ending_the_block_read_the_same_in_any_split(parts: list[str],
                                                           rng: random.Random) -> None:
    text = "".join(parts)
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1))) \
        if len(text) > 1 else []

    def run(bounds: list[int]) -> tuple[str | None, str]:
        reader = AnswerReader(ThinkSplitter(opened=True, calls_end_it=True))
        for a, b in itertools.pairwise(bounds):
            reader.feed(text[a:b], final=b == len(text))
        return reader.reasoning_text(), reader.content()

    whole = run([0, len(text)])
    assert run([0, *cuts, len(text)]) == whole
