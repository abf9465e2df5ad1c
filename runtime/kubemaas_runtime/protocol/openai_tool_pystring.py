"""The text of a Python string literal's body, decoded as far as it is sure, so that a pythonic
tool call's string argument can stream while the model writes it.

``decode_body`` reads escapes left to right and stops before one that more text could still
change (``\\x4`` may become ``\\x41``, ``\\1`` may become ``\\12``), unless the body is
complete. So what it gives for a body is always the start of what it gives once more is
written, and a stream of its output adds up to the whole. Escapes Python does not know keep
their backslash, as Python keeps them; a ``\\N{…}`` name it does not know stays as written.
"""

from __future__ import annotations

import re
import string
import unicodedata

_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a",
           "b": "\b", "f": "\f", "v": "\v", "\n": ""}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
_OCTAL = re.compile(r"[0-7]{1,3}")


def decode_body(raw: str, complete: bool) -> str:
    """The text ``raw`` (a string literal's body, without its quotes) spells; with
    ``complete`` false, up to the last escape that cannot change."""
    return decode_prefix(raw, complete)[0]


def decode_prefix(raw: str, complete: bool) -> tuple[str, int]:
    """``decode_body``'s text and how many characters of ``raw`` it used: the rest (an
    escape still being written) is decoded with what follows it."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        at = raw.find("\\", i)
        if at < 0:
            out.append(raw[i:])
            i = len(raw)
            break
        out.append(raw[i:at])
        step = _escape(raw, at, complete)
        if step is None:  # an escape still being written
            i = at
            break
        text, i = step
        out.append(text)
    return "".join(out), i


def _escape(raw: str, at: int, complete: bool) -> tuple[str, int] | None:
    """The escape at ``at``: its text and where the body goes on (None: wait for more)."""
    code = raw[at + 1:at + 2]
    if not code:
        return ("\\", at + 1) if complete else None
    if code in _SIMPLE:
        return _SIMPLE[code], at + 2
    if code in _HEX_DIGITS:
        wanted = _HEX_DIGITS[code]
        digits = raw[at + 2:at + 2 + wanted]
        hexadecimal = all(c in string.hexdigits for c in digits)
        if hexadecimal and len(digits) < wanted and at + 2 + len(digits) == len(raw) and \
                not complete:
            return None
        if hexadecimal and len(digits) == wanted and int(digits, 16) <= 0x10FFFF:
            return chr(int(digits, 16)), at + 2 + wanted
        return "\\" + code, at + 2
    if code in "01234567":
        octal = _OCTAL.match(raw, at + 1)
        assert octal is not None
        if len(octal.group()) < 3 and octal.end() == len(raw) and not complete:
            return None
        return chr(int(octal.group(), 8)), octal.end()
    if code == "N":
        return _named(raw, at, complete)
    return "\\" + code, at + 2


def _named(raw: str, at: int, complete: bool) -> tuple[str, int] | None:
    if raw[at + 2:at + 3] != "{":
        return None if at + 2 == len(raw) and not complete else ("\\N", at + 2)
    close = raw.find("}", at + 3)
    if close < 0:
        return None if not complete else ("\\N", at + 2)
    try:
        return unicodedata.lookup(raw[at + 3:close]), close + 1
    except KeyError:
        return "\\N", at + 2
