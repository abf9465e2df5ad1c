"""Structured outputs, served: OpenAI's ``response_format`` (json_object, json_schema) and
vLLM's ``structured_outputs`` / ``guided_*`` (json, regex, choice, grammar, structural_tag).
A random-weight model left alone writes noise; held to a grammar, every answer matches it,
whatever the sampling, streamed or not, beside unconstrained requests whose answers do not
change."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from . import llm_reference as ref
from .conftest import Server, start_llm_server, stream_events

SCHEMA = {"type": "object", "properties": {
    "ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
    "size": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["ok", "color", "size"], "additionalProperties": False}


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    server = start_llm_server(tiny_llama)
    yield server
    assert server.stop() == 0


def complete(server: Server, path: str = "/v1/completions", **doc: Any) -> dict[str, Any]:
    base = {"prompt": "the quick brown fox"} if path == "/v1/completions" else {
        "messages": [{"role": "user", "content": "the lazy dog"}]}
    status, body = server.post_json(path, {**base, "max_tokens": 48, **doc})
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def check_schema(text: str) -> None:
    doc = json.loads(text)
    assert set(doc) == {"ok", "color", "size"} and isinstance(doc["ok"], bool)
    assert doc["color"] in ("red", "green", "blue") and 0 <= doc["size"] <= 99
    assert text == json.dumps(doc)  # compact, with OpenAI's separators


def test_json_schema_greedy_and_sampled(server: Server) -> None:
    """Every answer is an object of the schema, finished by its grammar, greedy or sampled
    (eight choices), on completions and on chat; streamed, the chunks make the same text."""
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}
    greedy = complete(server, response_format=fmt, temperature=0)["choices"][0]
    check_schema(greedy["text"])
    assert greedy["finish_reason"] == "stop"
    sampled = complete(server, response_format=fmt, temperature=1.0, seed=5, n=8)
    for choice in sampled["choices"]:
        check_schema(choice["text"])
    assert len({c["text"] for c in sampled["choices"]}) > 1
    chat = complete(server, "/v1/chat/completions", response_format=fmt, temperature=0.7)
    check_schema(chat["choices"][0]["message"]["content"])
    events = stream_events(server, "/v1/completions", {
        "prompt": "the quick brown fox", "max_tokens": 48, "temperature": 0,
        "response_format": fmt, "stream": True})
    assert "".join(e["choices"][0]["text"] for e in events) == greedy["text"]


def test_regex_choice_and_grammar(server: Server) -> None:
    for seed in range(3):
        text = complete(server, structured_outputs={"regex": "[0-9]{3}-[a-z]{2}"},
                        temperature=1.0, seed=seed)["choices"][0]["text"]
        assert re.fullmatch("[0-9]{3}-[a-z]{2}", text), text
        pick = complete(server, guided_choice=["yes", "no", "not sure"], temperature=1.0,
                        seed=seed)["choices"][0]
        assert pick["text"] in ("yes", "no", "not sure") and pick["finish_reason"] == "stop"
        gbnf = ('root ::= "the " animal " " verb\nanimal ::= "cat" | "dog"\n'
                'verb ::= "sleeps" | "runs"')
        said = complete(server, structured_outputs={"grammar": gbnf}, temperature=1.0,
                        seed=seed)["choices"][0]["text"]
        assert re.fullmatch("the (cat|dog) (sleeps|runs)", said), said


def test_json_object_is_json_as_far_as_it_goes(server: Server, tiny_llama: Path) -> None:
    """``json_object``: any object; a random model may not close it within max_tokens, but
    what it wrote is valid so far (every token accepted by a fresh matcher of the grammar),
    and an answer the grammar finished parses."""
    import llguidance
    import llguidance.hf

    from kubemaas_runtime.llm.structured import Constraint, grammar_text

    tok, model = ref.load(tiny_llama)
    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=model.config.vocab_size)
    grammar = grammar_text(Constraint("json", '{"type": "object"}', "response_format"))
    for seed in range(3):
        choice = complete(server, response_format={"type": "json_object"}, temperature=1.0,
                          seed=seed, return_token_ids=True)["choices"][0]
        assert choice["text"].startswith("{")
        ids = choice["token_ids"]
        if choice["finish_reason"] == "stop":
            assert isinstance(json.loads(choice["text"]), dict)
        else:
            assert choice["finish_reason"] == "length"
        matcher = llguidance.LLMatcher(lltok, grammar)
        assert matcher.validate_tokens(ids) == len(ids)


def test_constrained_beside_plain_requests(server: Server, tiny_llama: Path) -> None:
    """A masked row beside unmasked ones in the same steps leaves their answers as generate()
    gives them."""
    ids = ref.prompt_ids(tiny_llama, "birds sing in the trees")
    want = ref.greedy_ids(tiny_llama, ids, 16)
    fmt = {"type": "json_schema", "json_schema": {"schema": SCHEMA}}

    def one(i: int) -> dict[str, Any]:
        if i % 2:
            return complete(server, response_format=fmt, temperature=0)
        return complete(server, prompt=ids, max_tokens=16, temperature=0, return_token_ids=True)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    for i, body in enumerate(answers):
        if i % 2:
            check_schema(body["choices"][0]["text"])
        else:
            assert body["choices"][0]["token_ids"] == want


def test_the_openai_client_parses_a_schema_answer(server: Server, client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "a thing"}], max_tokens=48,
        temperature=0, response_format={"type": "json_schema", "json_schema": {
            "name": "thing", "schema": SCHEMA, "strict": True}})
    check_schema(answer.choices[0].message.content or "")


CITY = {"type": "object", "properties": {"city": {"enum": ["Oslo", "Rome"]}},
        "required": ["city"], "additionalProperties": False}
CALL = re.compile(r'<f>(\{"city": "(Oslo|Rome)"\})</f>')


def structural_tag(trigger: str) -> dict[str, Any]:
    return {"structures": [{"begin": trigger + "<f>", "schema": CITY, "end": "</f>"}],
            "triggers": [trigger]}


def a_trigger_the_model_writes(server: Server, tiny_llama: Path) -> tuple[str, str]:
    """(the text before it, a trigger): a piece of the model's own greedy free text, whole
    tokens, its first occurrence there."""
    tok, _ = ref.load(tiny_llama)
    free = complete(server, structured_outputs={"structural_tag": structural_tag("@@@@")},
                    temperature=0, return_token_ids=True)["choices"][0]
    assert "@@@@" not in free["text"]
    ids = free["token_ids"]
    for k in range(1, len(ids) - 2):
        before, upto = tok.decode(ids[:k]), tok.decode(ids[:k + 2])
        trigger = upto[len(before):]
        if "\ufffd" not in upto and trigger.strip() and upto.find(trigger) == len(before):
            return before, trigger
    raise AssertionError(f"no clean trigger in {free['text']!r}")


def test_structural_tags(server: Server, tiny_llama: Path) -> None:
    """vLLM's structural tags: free text until the model writes a trigger, then the begin of
    a structure, JSON of its schema and its end, then free text again. Greedy, the answer is
    the free answer up to the trigger, then the structure; streamed or drawn by the sampler
    (top_k 1), the same text."""
    before, trigger = a_trigger_the_model_writes(server, tiny_llama)
    tag = structural_tag(trigger)
    greedy = complete(server, structured_outputs={"structural_tag": json.dumps(tag)},
                      temperature=0)["choices"][0]
    assert greedy["text"].startswith(before + trigger + "<f>"), (trigger, greedy["text"])
    assert CALL.match(greedy["text"], len(before + trigger)), greedy["text"]
    events = stream_events(server, "/v1/completions", {
        "prompt": "the quick brown fox", "max_tokens": 48, "temperature": 0, "stream": True,
        "response_format": {"type": "structural_tag", **tag}})
    assert "".join(e["choices"][0]["text"] for e in events) == greedy["text"]
    # through the sampler (top_k 1: the most likely allowed token), the same answer
    sampled = complete(server, temperature=1.0, top_k=1, seed=1, n=3,
                       response_format={"type": "structural_tag", **tag})
    assert [c["text"] for c in sampled["choices"]] == [greedy["text"]] * 3


@pytest.mark.parametrize(("extra", "param", "words"), [
    ({"structured_outputs": {"structural_tag": {"structures": [
        {"begin": "<a>", "schema": {}, "end": ""}], "triggers": ["<b"]}}},
     "structured_outputs", "starts with none of the triggers"),
    ({"response_format": {"type": "structural_tag", "structures": [
        {"begin": "<|tool|>", "schema": {}, "end": ""}, {"begin": "<x>", "schema": {}, "end": ""}],
        "triggers": ["<|tool|>", "<x>"]}}, "response_format", "give triggers of one kind"),
    ({"response_format": {"type": "structural_tag", "structures": [
        {"begin": "<a>", "schema": {"type": "nonsense"}, "end": ""}], "triggers": ["<a"]}},
     "response_format", "does not compile"),
    ({"structured_outputs": {"regex": "("}}, "structured_outputs", "does not compile"),
    ({"guided_grammar": "root ::= missing_rule"}, "guided_grammar", "does not compile"),
    ({"guided_json": {"type": "object", "properties": {"a": {"type": "nonsense"}}}},
     "guided_json", "does not compile"),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    # schemas that are only references to themselves: nothing may start them (they were an
    # empty answer, finish_reason "stop")
    ({"guided_json": {"$ref": "#"}}, "guided_json", "admits no output"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {
        "$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}}}},
     "response_format", "admits no output"),
    # (a structure's: it compiled, and failed mid-answer once the model wrote its trigger)
    ({"structured_outputs": {"structural_tag": {"structures": [
        {"begin": "<a>", "schema": {"type": "object"}, "end": "</a>"},
        {"begin": "<b>", "schema": {"$ref": "#"}, "end": "</b>"}], "triggers": ["<"]}}},
     "structured_outputs", "structures[1]'s schema admits no output"),
    ({"response_format": {"type": "xml"}}, "response_format", "must be"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": 5}}},
     "response_format", "JSON schema"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs",
     "exactly one"),
    ({"guided_choice": []}, "guided_choice", "non-empty list"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex", "once"),
    ({"guided_regex": "a+", "min_tokens": 2}, "min_tokens", "min_tokens"),
    # ~50 ms a mask (after a first one of ~0.5 s): it would stall every stream at every step
    ({"guided_regex": "(a{1000}){1000}"}, "guided_regex", "ms a token"),
])
def test_bad_structures_are_400(server: Server, extra: dict[str, Any], param: str,
                                words: str) -> None:
    status, body = server.post_json("/v1/completions", {"prompt": "hi", "max_tokens": 4,
                                                        **extra})
    assert status == 400, body
    assert body["error"]["param"] == param and words in body["error"]["message"], body
    assert complete(server, max_tokens=2, ignore_eos=True)["choices"][0]["finish_reason"] == \
        "length"  # the server still serves


def test_limits_that_leave_no_token_are_a_400(server: Server, tiny_llama: Path) -> None:
    """A request whose own limits bar every token at some point (a structure beside
    allowed_token_ids or bad_words, min_tokens beside allowed_token_ids that hold only EOS), or
    whose structure spells a special token as text (llguidance then allows that token alone
    and refuses it), is answered 400 with the reason: streamed, as an error event. Before,
    these were 500s with a traceback in the log, or answers outside allowed_token_ids."""
    tok, _ = ref.load(tiny_llama)
    a_id = tok.convert_tokens_to_ids("a")
    cases = [
        ({"structured_outputs": {"choice": ["abc"]}, "allowed_token_ids": [5]},
         "bar every token"),
        ({"allowed_token_ids": [tok.eos_token_id], "min_tokens": 3}, "min_tokens"),
        ({"allowed_token_ids": [a_id], "bad_words": ["a"]}, "bad_words"),
        ({"structured_outputs": {"regex": "<\\|user\\|>[a-z]+"}}, "special tokens"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {
            "enum": ["<|user|>"]}}}}, "special tokens"),
        # {"a": then nothing: "a" is only a reference to itself (this was '{"a": ' with
        # finish_reason "stop")
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {
            "type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "required": ["a"],
            "$defs": {"x": {"$ref": "#/$defs/x"}}}}}}, "nothing it allows may come next")]
    logged = len(server.logs())
    for extra, words in cases:
        doc = {"prompt": "the quick brown fox", "max_tokens": 6, **extra}
        status, body = server.post_json("/v1/completions", doc)
        assert status == 400 and words in body["error"]["message"], (extra, body)
        assert body["error"]["type"] == "invalid_request_error"
        events = stream_events(server, "/v1/completions", {**doc, "stream": True})
        assert events[-1]["error"]["message"] == body["error"]["message"], events
    responses = {"input": "hi", "max_output_tokens": 6, "text": {"format": {
        "type": "json_schema", "name": "x", "schema": {"enum": ["<|user|>"]}}}}
    status, body = server.post_json("/v1/responses", responses)
    assert status == 400 and "special tokens" in body["error"]["message"], body
    status, _, raw = server.request("POST", "/v1/responses", json.dumps(
        {**responses, "stream": True}).encode(), {"Content-Type": "application/json"})
    last = json.loads(raw.decode().strip().split("\n\n")[-1].split("data: ", 1)[1])
    assert status == 200 and last["type"] == "response.failed", last
    assert last["response"]["error"]["code"] == "invalid_prompt" and \
        "special tokens" in last["response"]["error"]["message"], last
    assert not [d for d in server.logs()[logged:] if d.get("level") == "error"]
    assert complete(server, max_tokens=2, ignore_eos=True)["choices"][0]["finish_reason"] == \
        "length"  # the server still serves
