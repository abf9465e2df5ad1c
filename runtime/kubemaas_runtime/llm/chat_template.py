"""The server's own chat template (``--chat-template``), in place of the tokenizer's.

As vLLM's flag takes it: a file, or the template itself when the text has ``{``, ``}`` or a
newline (no path has). A relative path is looked up in the model directory first (a template
shipped beside the weights, wherever the directory was fetched to), then in the working
directory. The template is tried on a one-message chat at start-up, so one that cannot render
stops the server with its error instead of failing every chat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import StartupError

MAX_TEMPLATE_BYTES = 1 << 20


def read_chat_template(setting: str | None, model_dir: Path) -> str | None:
    """The template ``--chat-template`` names (None: the tokenizer's own)."""
    if not setting:
        return None
    if any(char in setting for char in "{}\n"):
        return setting
    given = Path(setting)
    candidates = [given] if given.is_absolute() else [model_dir / given, Path.cwd() / given]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise StartupError(f"--chat-template {setting!r} is neither a template nor a file "
                           f"(looked for {', '.join(str(p) for p in candidates)})")
    if found.stat().st_size > MAX_TEMPLATE_BYTES:
        raise StartupError(f"--chat-template {found} is over {MAX_TEMPLATE_BYTES} bytes")
    try:
        return found.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"--chat-template {found} cannot be read: {exc}") from None


def use_chat_template(lm: Any, template: str, source: str) -> None:
    """Make ``template`` the model's, once it renders a one-message chat."""
    try:
        lm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True, chat_template=template)
    except Exception as exc:  # jinja's syntax and runtime errors, the template's own raise
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise StartupError(f"--chat-template {source}: cannot render a chat: "
                           f"{type(exc).__name__}: {first}") from None
    lm.tokenizer.chat_template = template
    lm.chat_template = template
