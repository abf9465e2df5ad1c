"""A request body's JSON (kubemaas_runtime.request_json): what json.loads would take but no model
can (a lone UTF-16 surrogate, nesting past the recursion limit) is a ValueError that says where,
and everything else parses as before."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from kubemaas_runtime.request_json import loads_json, lone_surrogate_at, parse_json


def test_a_surrogate_pair_is_one_character_and_parses() -> None:
    assert loads_json(b'{"prompt": "\\ud83d\\ude00"}') == {"prompt": "\U0001F600"}


@pytest.mark.parametrize(("body", "where"), [
    (b'{"prompt": "hi\\ud800"}', "prompt"),
    (b'{"messages": [{"role": "user", "content": "ok"}, {"content": "\\udfff!"}]}',
     "messages[1].content"),
    (b'{"stop": ["a", "\\uDC00"]}', "stop[1]"),
    (b'{"logit_bias": {"\\ud800": 1}}', "a key of logit_bias"),
    (b'"\\ud800"', "the body"),
])
def test_a_lone_surrogate_is_refused_where_it_sits(body: bytes, where: str) -> None:
    with pytest.raises(ValueError, match="lone UTF-16 surrogate") as err:
        loads_json(body)
    assert str(err.value).startswith(f"{where} holds"), err.value
    with pytest.raises(ValueError) as as_text:  # a JSON string a request carries: the same
        parse_json(body.decode())
    assert str(as_text.value) == str(err.value)


def test_a_utf16_body_with_a_lone_surrogate_is_refused_too() -> None:
    """json.loads decodes UTF-16 bodies letting a lone surrogate through unescaped."""
    body = '{"prompt": "hi\ud800"}'.encode("utf-16", "surrogatepass")
    with pytest.raises(ValueError, match=r"^prompt holds a lone UTF-16 surrogate"):
        loads_json(body)
    assert loads_json('{"prompt": "hi"}'.encode("utf-16")) == {"prompt": "hi"}


@pytest.mark.parametrize("parse", [loads_json, parse_json])
def test_nesting_past_the_recursion_limit_is_refused(parse: Callable[[bytes], Any]) -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        parse(b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert lone_surrogate_at(loads_json(b"[" * 500 + b'"x"' + b"]" * 500)) is None


def test_what_json_loads_took_it_still_takes_and_refuses() -> None:
    assert math.isnan(loads_json(b'{"t": NaN}')["t"])
    big = 123456789012345678901234567890
    assert parse_json(b'{"n": %d}' % big)["n"] == big  # exact (orjson would read a float)
    with pytest.raises(ValueError, match="Expecting"):
        loads_json(b'{"prompt": ')
    with pytest.raises(ValueError, match="Expecting value"):
        loads_json(b"\xff\xfe")  # json.loads reads these two bytes as UTF-16's BOM
