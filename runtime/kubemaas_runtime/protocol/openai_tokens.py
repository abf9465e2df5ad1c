"""Tokens of the OpenAI endpoints: a prompt's or a chat's ids (in a worker thread when long),
ids back to text, and the character check that refuses a prompt too long to fit before it is
tokenized."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..security.prompt import prompt_char_limit
from .openai_errors import ApiError
from .openai_render import ChatRender

if TYPE_CHECKING:
    from .openai_embeddings import Pooled
    from .openai_engine import Served

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
                raise ApiError(400, "this model has no chat template; use /v1/completions")
            try:
                rendered = (render or ChatRender()).apply(tok, messages, tools)
            except Exception as exc:  # a template may raise on a message order it refuses
                raise ApiError(400, f"the chat template refused the messages: {exc}",
                               "messages") from None
            return encode(rendered, special)
        return encode(text or "", special)

    size = sum(len(m["content"]) for m in messages or ()) + len(text or "") + \
        (len(json.dumps(tools)) if tools else 0)
    check_chars(served, size, "prompt" if messages is None else "messages")
    if size > TOKENIZE_OFF_LOOP_CHARS:
        return await asyncio.get_running_loop().run_in_executor(
            None, run, served.encode_off_loop)
    return run(served.encode)


def check_chars(served: Served | Pooled, size: int, param: str) -> None:
    """A prompt too long in characters to fit is refused before it is tokenized."""
    if size > prompt_char_limit(served.tokenizer, served.max_model_len):
        raise ApiError(400, f"This model's maximum context length is {served.max_model_len} "
                       f"tokens; a prompt of {size} characters cannot fit.", param,
                       "context_length_exceeded")
