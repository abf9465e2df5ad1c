"""A reasoning model's thinking, kept apart from its answer (``--reasoning-parser``).

Qwen3, QwQ and DeepSeek-R1 (and its distills) write their reasoning between ``<think>`` and
``</think>`` before the answer; some chat templates open the ``<think>`` themselves at the end
of the prompt (DeepSeek-R1's), so the output starts inside it. The reasoning goes to the
message's ``reasoning_content`` (and ``reasoning``, vLLM's newer name for it), the rest is the
``content``, and tool calls are read from the content only, as vLLM's ``deepseek_r1`` and
``qwen3`` parsers do. A grammar (a structured output, a named or required tool choice) holds
the answer after the reasoning, as vLLM's does, when the tokenizer has ``<think>`` and
``</think>`` as tokens of their own (every reasoning model's has; llm/structured.py,
``AfterThinking``); otherwise it holds the output from its first token, which then starts
outside any ``<think>`` block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .openai_render import template_text
from .openai_tool_stream import held_prefix

OPEN, CLOSE = "<think>", "</think>"
TOOL_CALL, _FUNCTION = "<tool_call>", "<function="
_XML_CALL = re.compile(r"<tool_call>\s*<function=")
PARSERS = ("deepseek_r1", "qwen3")  # the names vLLM users pass; both read <think> blocks


def resolve_reasoning_parser(setting: str, chat_template: Any) -> str:
    """``--reasoning-parser``, ``auto`` resolved from the chat template: a template that
    writes (or strips) ``<think>`` blocks belongs to a model that writes them."""
    if setting != "auto":
        return setting
    return "qwen3" if CLOSE in template_text(chat_template) else "none"


def think_token_ids(tokenizer: Any) -> tuple[int, int] | None:
    """The ids of ``<think>`` and ``</think>`` when each is one token (None otherwise: a
    grammar cannot then tell the reasoning from the answer token by token)."""
    ids = []
    for mark in (OPEN, CLOSE):
        encoded = tokenizer.encode(mark, add_special_tokens=False)
        if len(encoded) != 1:
            return None
        ids.append(int(encoded[0]))
    return ids[0], ids[1]


def prompt_opens_think(tokenizer: Any, prompt: list[int]) -> bool:
    """The chat template ended the prompt with ``<think>``: the output starts inside it."""
    return str(tokenizer.decode(prompt[-8:])).rstrip().endswith(OPEN)


@dataclass
class ThinkSplitter:
    """Splits a ``<think>…</think>`` block from the start of the text (``opened``: the prompt
    ended with ``<think>``, so the text starts inside it)."""

    opened: bool = False
    # Qwen3.5's way, as vLLM's qwen3 parser reads it: an XML call (<tool_call> then
    # <function=) written inside the block ends the reasoning there (the call is content)
    calls_end_it: bool = False
    text: str = ""
    pos: int = 0
    state: str = "start"  # start | reasoning | after (spaces before the answer) | content
    reasoning_end: int = 0  # where the block ends in the text (past </think>), once known

    def __post_init__(self) -> None:
        if self.opened:
            self.state = "reasoning"

    def feed(self, delta: str, final: bool = False) -> list[tuple[str, str]]:
        self.text += delta
        out: list[tuple[str, str]] = []
        while True:
            rest = self.text[self.pos:]
            if self.state == "start":
                head = rest.lstrip()
                if not final and len(head) < len(OPEN) and OPEN.startswith(head):
                    break  # too little text to tell
                if head.startswith(OPEN):
                    self.pos += len(rest) - len(head) + len(OPEN)
                    self.state = "reasoning"
                else:
                    self.state = "content"
            elif self.state == "reasoning":
                at = rest.find(CLOSE)
                call = _XML_CALL.search(rest) if self.calls_end_it else None
                if call is not None and (at < 0 or call.start() < at):
                    _add(out, "reasoning", rest[:call.start()])
                    self.pos += call.start()
                    self.reasoning_end = self.pos
                    self.state = "content"  # the call, read by the tool reader
                    continue
                if at < 0:
                    ready = rest if final else rest[:len(rest) - self._held(rest)]
                    _add(out, "reasoning", ready)
                    self.pos += len(ready)
                    if final:  # left open: all of it was reasoning
                        self.reasoning_end = len(self.text)
                    break
                _add(out, "reasoning", rest[:at])
                self.pos += at + len(CLOSE)
                self.reasoning_end = self.pos
                self.state = "after"
            elif self.state == "after":
                head = rest.lstrip()
                self.pos += len(rest) - len(head)
                if not head:
                    break
                self.state = "content"
            else:
                _add(out, "content", rest)
                self.pos = len(self.text)
                break
        return out


    def _held(self, rest: str) -> int:
        """How much of the reasoning's end may still be ``</think>`` or, when calls end it,
        the start of an XML call."""
        held = held_prefix(rest, (CLOSE,))
        if self.calls_end_it:
            held = max(held, held_prefix(rest, (TOOL_CALL,)))
            at = rest.rfind(TOOL_CALL)
            if at >= 0 and _FUNCTION.startswith(rest[at + len(TOOL_CALL):].lstrip()[:10]):
                held = max(held, len(rest) - at)
        return held


def _add(out: list[tuple[str, str]], kind: str, text: str) -> None:
    if text:
        out.append((kind, text))
