"""How a chat is rendered into a prompt: vLLM's request fields for the chat template.

``add_generation_prompt`` (default true: the template's opening of the assistant's turn),
``continue_final_message`` (the last assistant message is left open, for the model to go on
writing it; not with a generation prompt), and ``chat_template_kwargs``: extra variables for
the template (``{"enable_thinking": false}`` for Qwen3's, for one). As in vLLM,
``reasoning_effort`` reaches the template too (with ``enable_thinking``: false for ``none``,
true otherwise, unless the request's kwargs set it), and so do ``documents`` (for the templates
that cite them). A request's own ``chat_template`` stays refused: a template is code, and the
server runs the model's.
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

from .openai_errors import ApiError

MAX_KWARGS_CHARS = 4096
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")  # vLLM's values
MAX_DOCUMENTS_CHARS = 1 << 20  # the prompt's own limit applies after rendering


@dataclass(frozen=True)
class ChatRender:
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    def apply(self, tokenizer: Any, messages: list[dict[str, Any]],
              tools: list[dict[str, Any]] | None) -> str:
        return str(tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=self.add_generation_prompt,
            continue_final_message=self.continue_final_message, tokenize=False,
            **self.template_kwargs))


class DeveloperMessage(dict[str, Any]):
    """A ``developer`` message, handed to the template as a ``system`` one (what OpenAI means by
    it, and what templates know); marked so that a template's refusal names the role sent."""


def refused(exc: Exception, messages: list[dict[str, Any]]) -> str:
    """The 400's text when the template raised ``exc`` on ``messages``."""
    text = f"the chat template refused the messages: {exc}"
    if any(isinstance(m, DeveloperMessage) for m in messages):
        text += " (a 'developer' message is handed to the template as a 'system' message)"
    return text


def template_text(chat_template: Any) -> str:
    """A tokenizer's chat template as one text (some have several, named)."""
    templates = chat_template.values() if isinstance(chat_template, dict) else [chat_template]
    return "\n".join(t for t in templates if isinstance(t, str))


def _flag(doc: dict[str, Any], key: str, default: bool) -> bool:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"'{key}' must be a boolean, got {type(value).__name__}", key)
    return value


@functools.cache
def _reserved() -> frozenset[str]:
    """The names apply_chat_template takes itself (and the request's own fields): a template
    variable must not be one. Once per process: reading the signature took a sixth of the
    event loop's work per chat request on the tiny model."""
    from transformers import PreTrainedTokenizerBase

    names = inspect.signature(PreTrainedTokenizerBase.apply_chat_template).parameters
    return frozenset(names) | {"messages", "tools"}


def parse_render(doc: dict[str, Any], generation_default: bool = True) -> ChatRender:
    """``generation_default``: add_generation_prompt's default (vLLM's pooling requests render
    the chat as it stands: false)."""
    if doc.get("chat_template") is not None:  # a template is code: the server runs its own
        raise ApiError(400, "'chat_template' is not supported (leave it out)", "chat_template")
    generation = _flag(doc, "add_generation_prompt", generation_default)
    continue_final = _flag(doc, "continue_final_message", False)
    if generation and continue_final:
        raise ApiError(400, "'continue_final_message' needs 'add_generation_prompt': false (the "
                       "last message is continued, no new turn is opened)",
                       "continue_final_message")
    kwargs = doc.get("chat_template_kwargs")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or len(json.dumps(kwargs)) > MAX_KWARGS_CHARS:
        raise ApiError(400, f"'chat_template_kwargs' must be an object of at most "
                       f"{MAX_KWARGS_CHARS} characters", "chat_template_kwargs")
    taken = sorted(set(kwargs) & _reserved())
    if taken:
        raise ApiError(400, f"'chat_template_kwargs' may not set {', '.join(taken)} (give them "
                       "as the request's own fields)", "chat_template_kwargs")
    return ChatRender(generation, continue_final, {**kwargs, **_request_variables(doc, kwargs)})


def reasoning_effort(doc: dict[str, Any]) -> str | None:
    effort = doc.get("reasoning_effort")
    if effort is not None and effort not in EFFORTS:
        raise ApiError(400, f"'reasoning_effort' must be one of {', '.join(EFFORTS)}",
                       "reasoning_effort")
    return effort


def _request_variables(doc: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request's own fields that vLLM hands the template: ``reasoning_effort`` (and
    ``enable_thinking`` from it, unless the kwargs set it) and ``documents``."""
    out: dict[str, Any] = {}
    effort = reasoning_effort(doc)
    if effort is not None:
        out["reasoning_effort"] = effort
        if "enable_thinking" not in kwargs:
            out["enable_thinking"] = effort != "none"
    documents = doc.get("documents")
    if documents is not None:
        if not isinstance(documents, list) or not all(
                isinstance(d, dict) and all(isinstance(v, str) for v in d.values())
                for d in documents) or len(json.dumps(documents)) > MAX_DOCUMENTS_CHARS:
            raise ApiError(400, "'documents' must be a list of objects of strings (for "
                           "example {\"title\": …, \"text\": …})", "documents")
        out["documents"] = documents
    return out
