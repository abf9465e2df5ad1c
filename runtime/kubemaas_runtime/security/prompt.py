"""A prompt too long to fit, refused before it is tokenized.

No token of a vocabulary covers more characters than its longest entry, so a text of ``n``
characters is at least ``n / longest`` tokens. A prompt longer than ``max_model_len * longest``
characters (times a margin for normalizers that fold several characters into one) cannot fit the
context window whatever the tokenizer does with it: it is refused at once, instead of spending
seconds of CPU tokenizing a million tokens only to refuse them.
"""

from __future__ import annotations

import contextlib
from typing import Any

_ATTR = "_kubemaas_longest_token_chars"
NORMALIZER_MARGIN = 2


def longest_token_chars(tokenizer: Any) -> int:
    """Characters of the vocabulary's longest entry (cached on the tokenizer)."""
    cached = getattr(tokenizer, _ATTR, None)
    if isinstance(cached, int):
        return cached
    vocab = tokenizer.get_vocab()
    longest = max((len(t) for t in vocab), default=1)
    with contextlib.suppress(AttributeError):
        setattr(tokenizer, _ATTR, longest)
    return max(longest, 1)


def prompt_char_limit(tokenizer: Any, max_model_len: int) -> int:
    return max_model_len * longest_token_chars(tokenizer) * NORMALIZER_MARGIN
