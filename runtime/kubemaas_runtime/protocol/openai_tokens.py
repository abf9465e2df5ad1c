"""Tokens of the OpenAI endpoints: a prompt's or a chat's ids (in a worker thread when long),
a generation request's prompts and echoed texts, ids back to text, and the character check that
refuses a prompt too long to fit before it is tokenized."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..security.prompt import prompt_char_limit
from .openai_errors import ApiError
from .openai_render import ChatRender, refused

if TYPE_CHECKING:
    from .openai_embeddings import Pooled
    from .openai_engine import Served
    from .openai_schema import GenerationRequest

# a pooling server has no /v1/completions to send the text to
_NO_TEMPLATE_POOLING = ("this model has no chat template: send the text itself ('input', or "
                        "'prompt' to /tokenize) instead of 'messages'")
TOKENIZE_OFF_LOOP_CHARS = 4096  # longer texts are tokenized in a worker thread
DECODE_OFF_LOOP_TOKENS = 4096  # longer id lists are decoded in a worker thread


async def decode_ids(served: Served | Pooled, ids: list[int]) -> str:
    if len(ids) > DECODE_OFF_LOOP_TOKENS:
        return str(await asyncio.get_running_loop().run_in_executor(
            None, served.tokenizer.decode, ids))
    return str(served.tokenizer.decode(ids))


async def encode_prompt(served: Served | Pooled, messages: list[dict[str, Any]] | None,
                 text: str | None, special: bool, render: ChatRender | None = None,
                 tools: list[dict[str, Any]] | None = None) -> list[int]:
    """The token ids of chat ``messages`` (rendered by the chat template, with the
    ``tools`` the model may call) or of ``text``."""
    tok = served.tokenizer

    def run(encode: Callable[[str, bool], list[int]]) -> list[int]:
        if messages is not None:
            if not getattr(tok, "chat_template", None):
                raise ApiError(400, _NO_TEMPLATE_POOLING if hasattr(served, "embedder") else
                               "this model has no chat template; use /v1/completions",
                               "messages")
            try:
                rendered = (render or ChatRender()).apply(tok, messages, tools)
            except Exception as exc:  # a template may raise on a message order it refuses
                raise ApiError(400, refused(exc, messages), "messages") from None
            return encode(rendered, special)
        return encode(text or "", special)

    size = sum(len(m["content"]) + _calls_chars(m) for m in messages or ()) + \
        len(text or "") + (len(json.dumps(tools)) if tools else 0)
    check_chars(served, size, "prompt" if messages is None else "messages")
    if size + _optional_chars(messages, render) > TOKENIZE_OFF_LOOP_CHARS:
        return await asyncio.get_running_loop().run_in_executor(
            None, run, served.encode_off_loop)
    return run(served.encode)


def _calls_chars(message: dict[str, Any]) -> int:
    """The characters of a message's earlier tool calls (every template writes them)."""
    return len(json.dumps(message["tool_calls"])) if message.get("tool_calls") else 0


def _optional_chars(messages: list[dict[str, Any]] | None, render: ChatRender | None) -> int:
    """What a template may write too, or leave out (earlier reasoning, speakers' names,
    documents): not refused for its size, but tokenized off the event loop when long."""
    reasoning = sum(len(m.get("reasoning_content") or "") + len(m.get("name") or "")
                    for m in messages or ())
    return reasoning + (len(json.dumps(render.template_kwargs)) if render is not None and
                        render.template_kwargs else 0)


def check_chars(served: Served | Pooled, size: int, param: str) -> None:
    """A prompt too long in characters to fit is refused before it is tokenized."""
    if size > prompt_char_limit(served.tokenizer, served.max_model_len):
        raise ApiError(400, f"This model's maximum context length is {served.max_model_len} "
                       f"tokens; a prompt of {size} characters cannot fit.", param,
                       "context_length_exceeded")


async def prompt_ids(served: Served, req: GenerationRequest) -> list[list[int]]:
    """The token ids of each prompt (a chat is one)."""
    if req.chat:
        tools = list(req.tools.tools) if req.tools is not None else None
        return [await encode_prompt(served, req.messages, None, special=False,
                                   render=req.render, tools=tools)]
    texts = [p.text for p in req.prompts if p.text is not None]
    if len(req.prompts) == 1 or sum(map(len, texts)) <= TOKENIZE_OFF_LOOP_CHARS:
        return [p.ids if p.ids is not None else
                await encode_prompt(served, None, p.text, special=True) for p in req.prompts]
    for text in texts:  # a batch of many prompts: all of them in one worker thread
        check_chars(served, len(text), "prompt")
    encode = served.encode_off_loop
    return await asyncio.get_running_loop().run_in_executor(None, lambda: [
        p.ids if p.ids is not None else encode(p.text or "", True) for p in req.prompts])


async def echo_texts(served: Served, req: GenerationRequest, prompts: list[list[int]]
                     ) -> list[str]:
    """With echo, the text each prompt's choices start with: as sent, or decoded from its
    token ids (and from them when the prompt was truncated)."""
    if not req.echo:
        return [""] * len(prompts)
    if req.chat:  # vLLM's: the last message's content, when it is the assistant's
        last = (req.messages or [{}])[-1]
        return [str(last["content"]) if last.get("role") == "assistant" else ""]
    return [p.text if p.text is not None and not req.truncate_prompt_tokens else
            await decode_ids(served, ids) for p, ids in zip(req.prompts, prompts, strict=True)]
