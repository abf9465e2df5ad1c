"""The structure a request's output must follow: OpenAI's ``response_format`` (json_object,
json_schema, and vLLM's structural_tag) and vLLM's ``structured_outputs`` and older
``guided_*`` fields, each checked for shape and made a ``Constraint`` (compiled by the server,
llm/structured.py)."""

from __future__ import annotations

import json
from typing import Any

from ..llm.structured import Constraint
from ..request_json import parse_json
from .openai_errors import bad_request as _bad


def _response_format(fmt: Any) -> Constraint | None:
    """OpenAI's ``response_format``: text, any JSON object, or JSON following a schema; or
    vLLM's structural tags."""
    param = "response_format"
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object",
                                                             "json_schema", "structural_tag"):
        raise _bad("'response_format' must be {\"type\": \"text\"}, {\"type\": "
                   "\"json_object\"}, {\"type\": \"json_schema\", \"json_schema\": "
                   "{\"schema\": {...}}} or {\"type\": \"structural_tag\", \"structures\": "
                   "[...], \"triggers\": [...]}", param)
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "structural_tag":
        return _structural_tag(fmt, param)
    if fmt["type"] == "json_object":
        return Constraint("json", '{"type": "object"}', param)
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise _bad("'response_format.json_schema' must be an object whose 'schema' is a JSON "
                   "schema", param)
    return Constraint("json", json.dumps(spec.get("schema", {})), param)


def _structured(value: Any, param: str) -> Constraint | None:
    """vLLM's ``structured_outputs`` (one of json, json_object, regex, choice, grammar)."""
    if not isinstance(value, dict):
        raise _bad(f"'{param}' must be an object", param)
    given = {k: v for k, v in value.items() if k in _STRUCTURED_KINDS and v not in (None, False)}
    if len(given) != 1:
        raise _bad(f"'{param}' takes exactly one of {', '.join(_STRUCTURED_KINDS)}", param)
    ((kind, source),) = given.items()
    return _constraint(kind, source, param)


_STRUCTURED_KINDS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")
_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
           "guided_grammar": "grammar"}  # vLLM's older names


def _constraint(kind: str, source: Any, param: str) -> Constraint:
    if kind == "json_object":
        return Constraint("json", '{"type": "object"}', param)
    if kind == "json":
        if isinstance(source, str):
            try:
                source = parse_json(source)
            except ValueError:
                raise _bad(f"'{param}': the JSON schema is not valid JSON", param) from None
        if not isinstance(source, dict):
            raise _bad(f"'{param}': the JSON schema must be an object", param)
        return Constraint("json", json.dumps(source), param)
    if kind == "structural_tag":
        return _structural_tag(source, param)
    if kind == "choice":
        if not isinstance(source, list) or not source or \
                not all(isinstance(c, str) and c for c in source):
            raise _bad(f"'{param}': the choice must be a non-empty list of non-empty strings",
                       param)
        return Constraint("choice", json.dumps(source), param)
    if not isinstance(source, str) or not source:
        raise _bad(f"'{param}': the {kind} must be a non-empty string", param)
    return Constraint(kind, source, param)


MAX_STRUCTURES = 128  # as many as a request's tools


def _structural_tag(value: Any, param: str) -> Constraint:
    """vLLM's structural tags: free text in which, once the model writes one of the
    ``triggers``, it continues with the ``begin`` of one of the ``structures`` (a begin starts
    with its trigger), then JSON following that structure's ``schema``, then its ``end``."""
    if isinstance(value, str):
        try:
            value = parse_json(value)
        except ValueError:
            raise _bad(f"'{param}': the structural tag is not valid JSON", param) from None
    shape = (f"'{param}': a structural tag is {{\"structures\": [{{\"begin\": str, \"schema\": "
             "{...}, \"end\": str}, ...], \"triggers\": [str, ...]}")
    if not isinstance(value, dict) or value.get("type", "structural_tag") != "structural_tag":
        raise _bad(shape, param)
    if "format" in value and "structures" not in value:
        raise _bad(f"'{param}': the structural tag's 'format' form is not served; give "
                   "'structures' and 'triggers'", param)
    structures, triggers = value.get("structures"), value.get("triggers")
    if not isinstance(triggers, list) or not triggers or \
            not all(isinstance(t, str) and t for t in triggers) or \
            not isinstance(structures, list) or not 0 < len(structures) <= MAX_STRUCTURES:
        raise _bad(f"{shape}, with 1 to {MAX_STRUCTURES} structures and non-empty triggers",
                   param)
    tags = []
    for i, item in enumerate(structures):
        if not isinstance(item, dict) or not isinstance(item.get("begin"), str) or \
                not isinstance(item.get("end"), str) or not isinstance(item.get("schema"), dict):
            raise _bad(f"{shape}; structures[{i}] is not", param)
        if not any(item["begin"].startswith(t) for t in triggers):
            raise _bad(f"'{param}': structures[{i}]'s begin {item['begin']!r} starts with none "
                       f"of the triggers {triggers}", param)
        tags.append({"begin": item["begin"], "schema": item["schema"], "end": item["end"]})
    return Constraint("structural_tag", json.dumps({"structures": tags, "triggers": triggers}),
                      param)


def output_constraint(doc: dict[str, Any]) -> Constraint | None:
    """The structure the output must follow, from whichever field gives it (one at most)."""
    found: list[Constraint | None] = []
    if doc.get("response_format") is not None:
        found.append(_response_format(doc["response_format"]))
    if doc.get("structured_outputs") is not None:
        found.append(_structured(doc["structured_outputs"], "structured_outputs"))
    for key, kind in _GUIDED.items():
        if doc.get(key) is not None:
            found.append(_constraint(kind, doc[key], key))
    given = [c for c in found if c is not None]
    if len(given) > 1:
        raise _bad("give the output's structure once (response_format, structured_outputs or "
                   "one guided_* field)", given[1].param)
    if given and doc.get("min_tokens"):
        raise _bad("'min_tokens' cannot be combined with a structured output (the grammar "
                   "decides where the output ends)", "min_tokens")
    return given[0] if given else None
