"""How a chat answer's text is read: its reasoning, its content, its tool calls.

``AnswerReader`` chains the readers a choice's text goes through: the reasoning splitter
(``openai_reasoning.py``), then the tool calls' reader (``openai_tool_stream.py``). Fed delta
by delta or the whole text at once, it reads the same, so a streamed answer and a whole one
always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .openai_reasoning import ThinkSplitter
from .openai_schema import GenerationRequest
from .openai_tool_stream import NamedCall, StepReader, tool_call
from .openai_tools import tool_finish, tool_reader


@dataclass
class AnswerReader:
    """A choice's text read as reasoning, content and tool calls (either part optional)."""

    think: ThinkSplitter | None = None
    calls: StepReader | NamedCall | None = None
    show_reasoning: bool = True  # false (vLLM's include_reasoning): the reasoning is dropped
    one_call: bool = False  # parallel_tool_calls false: the calls after the first are dropped
    reasoning: list[str] = field(default_factory=list)
    plain: list[str] = field(default_factory=list)  # the content, when no calls are read

    def feed(self, delta: str, final: bool = False) -> list[tuple[Any, ...]]:
        """``("reasoning", text)``, ``("content", text)`` and the tool-call reader's events."""
        parts = [("content", delta)] if self.think is None else self.think.feed(delta, final)
        out: list[tuple[Any, ...]] = []
        for kind, text in parts:
            if kind == "reasoning":
                if self.show_reasoning:
                    self.reasoning.append(text)
                    out.append((kind, text))
            elif self.calls is not None:
                out += self._kept(self.calls.feed(text))
            elif text:
                self.plain.append(text)
                out.append((kind, text))
        if final and self.calls is not None:
            out += self._kept(self.calls.close())
        return out

    def _kept(self, events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The call readers' events, but a second call's (and later ones') with ``one_call``,
        as vLLM drops them (the model wrote them; the client asked for one)."""
        if not self.one_call:
            return events
        return [e for e in events if e[0] not in ("call", "arguments") or e[1] == 0]

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        calls = self.calls.calls if self.calls is not None else []
        return calls[:1] if self.one_call else calls

    def content(self) -> str:
        """The whole content read: what a stream sends, joined (the readers drop the spaces
        before each call and after the last)."""
        return "".join(self.plain if self.calls is None else self.calls.content)

    def finish_reason(self, finish: str | None) -> str | None:
        """``tool_calls`` for an answer that made calls of its own accord (a named choice's
        call was asked for: its finish stays)."""
        named = isinstance(self.calls, NamedCall)
        return tool_finish(finish) if self.tool_calls and not named else finish

    def reasoning_text(self) -> str | None:
        return "".join(self.reasoning) if self.think is not None and self.reasoning else None

    def reasoning_tokens(self, pieces: list[tuple[int, int]]) -> int:
        """The output tokens the reasoning took, its markers included (once the text is
        read): ``pieces``, each delta's characters and tokens, in order."""
        end = self.think.reasoning_end if self.think is not None else 0
        count = at = 0
        for chars, tokens in pieces:
            if at >= end:
                break
            count, at = count + tokens, at + chars
        return count


def answer_reader(req: GenerationRequest, opened: bool, tool_parser: str,
                  reasoning_parser: str, named: bool = False,
                  thinks_first: bool = False) -> AnswerReader | None:
    """The reader of a chat choice's text, if it is more than content (None: plain text).
    ``opened``: the prompt ends with ``<think>`` (the template opened the block), so the
    output starts inside it unless a grammar holds it from the first token (not
    ``thinks_first``); ``named``: a named tool choice read as a call even without reasoning
    (the chat path streams such a call itself)."""
    think = None
    if req.chat and reasoning_parser != "none":
        think = ThinkSplitter(
            opened=opened and (req.constraint is None or thinks_first),
            calls_end_it=tool_parser == "qwen3_coder" and req.tools is not None
            and req.tools.choice == "auto")
    calls: StepReader | NamedCall | None = None
    if req.tools is not None and req.tools.choice == "named":
        if not thinks_first:  # held from the first token, the whole text is the arguments
            think = None
        if think is None and not named:
            return None
        calls = NamedCall(str(req.tools.name))
    elif req.tools is not None:
        calls = tool_reader(req.tools, tool_parser)
    if think is None and calls is None:
        return None
    return AnswerReader(think, calls, show_reasoning=req.include_reasoning,
                        one_call=req.tools is not None and not req.tools.parallel)


def answer_message(req: GenerationRequest, reader: AnswerReader | None, text: str,
                   finish: str | None) -> tuple[dict[str, Any], str | None]:
    """The assistant message of a whole chat answer, and its finish reason."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if req.tools is not None and req.tools.choice == "named" and (
            reader is None or reader.think is None):  # the whole text is the call's arguments
        message.update(content=None, tool_calls=[tool_call(str(req.tools.name), text)])
        return message, finish
    if reader is None:
        return message, finish
    reader.feed(text, final=True)
    message["content"] = reader.content()
    if reader.think is not None:
        message["reasoning_content"] = message["reasoning"] = reader.reasoning_text()
        if message["reasoning"] is not None:
            message["content"] = message["content"] or None  # it thought, and said nothing
    if not reader.tool_calls:
        return message, finish
    message.update(content=message["content"] or None, tool_calls=reader.tool_calls)
    return message, reader.finish_reason(finish)
