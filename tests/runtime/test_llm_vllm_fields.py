"""vLLM's request fields beyond OpenAI's, served: how the chat template renders the prompt
(``add_generation_prompt``, ``continue_final_message``, ``chat_template_kwargs``), and what the
answer holds (``truncate_prompt_tokens``, ``include_stop_str_in_output``,
``skip_special_tokens``, ``allowed_token_ids``, ``return_tokens_as_token_ids``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import llm_reference as ref
from .conftest import Server, start_llm_server, with_chat_template

# the test template, with a variable only chat_template_kwargs sets, and the speakers' names
TEMPLATE = (
    "{{ bos_token }}{% if greeting is defined %}<|system|>\n{{ greeting }}{{ eos_token }}\n"
    "{% endif %}{% for m in messages %}<|{{ m['role'] }}|>"
    "{{ ' ' + m['name'] if m['name'] is defined else '' }}\n{{ m['content'] }}"
    "{% if not (loop.last and continue_final_message) %}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
USER = [{"role": "user", "content": "the lazy dog"}]


@pytest.fixture(scope="module")
def model(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_chat_template(tiny_llama, tmp_path_factory.mktemp("fields") / "tiny-llama",
                              TEMPLATE)


@pytest.fixture(scope="module")
def server(model: Path) -> Iterator[Server]:
    server = start_llm_server(model)
    yield server
    assert server.stop() == 0


def post(server: Server, path: str, **doc: Any) -> dict[str, Any]:
    status, body = server.post_json(path, {"temperature": 0, **doc})
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def rendered(server: Server, model: Path, **doc: Any) -> str:
    body = post(server, "/v1/chat/completions", max_tokens=1, return_token_ids=True, **doc)
    return str(ref.load(model)[0].decode(body["prompt_token_ids"]))


def test_the_chat_template_fields(server: Server, model: Path) -> None:
    assert rendered(server, model, messages=USER).endswith("<|assistant|>\n")
    assert not rendered(server, model, messages=USER,
                        add_generation_prompt=False).endswith("<|assistant|>\n")
    opened = [*USER, {"role": "assistant", "content": "the cat sat"}]
    assert rendered(server, model, messages=opened, add_generation_prompt=False,
                    continue_final_message=True).endswith("<|assistant|>\nthe cat sat")
    greeted = rendered(server, model, messages=USER,
                       chat_template_kwargs={"greeting": "be brief"})
    assert "<|system|>\nbe brief" in greeted
    tokenized = post(server, "/tokenize", messages=USER, add_generation_prompt=False,
                     chat_template_kwargs={"greeting": "be brief"})
    text = ref.load(model)[0].decode(tokenized["tokens"])
    assert "be brief" in text and not text.endswith("<|assistant|>\n")
    for bad, param in (({"continue_final_message": True}, "continue_final_message"),
                       ({"chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs"),
                       ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
                       ({"chat_template_kwargs": [1]}, "chat_template_kwargs"),
                       ({"chat_template": "{{ 7 * 7 }}"}, "chat_template")):
        status, body = server.post_json("/v1/chat/completions", {"messages": USER, **bad})
        assert status == 400 and body["error"]["param"] == param, body
    status, body = server.post_json("/v1/completions", {"prompt": "hi",
                                                        "add_generation_prompt": False})
    assert status == 400 and body["error"]["param"] == "add_generation_prompt"


def test_a_messages_name_reaches_the_chat_template(server: Server, model: Path) -> None:
    """vLLM hands a message's ``name`` to the template (multi-speaker templates write it); the
    server dropped it, so the prompt lost who spoke. A name that is not a string is a 400."""
    named = [{"role": "system", "content": "be kind"},
             {"role": "user", "name": "alice", "content": "the lazy dog"}]
    assert "<|user|> alice\nthe lazy dog" in rendered(server, model, messages=named)
    tokenized = post(server, "/tokenize", messages=named)
    assert "<|user|> alice\n" in ref.load(model)[0].decode(tokenized["tokens"])
    assert "<|system|>\nbe kind" in rendered(server, model, messages=named)
    status, body = server.post_json("/v1/chat/completions", {
        "messages": [{"role": "user", "name": 5, "content": "hi"}]})
    assert status == 400 and body["error"]["param"] == "messages[0].name", body


def test_truncate_prompt_tokens_keeps_the_last_tokens(server: Server, model: Path) -> None:
    ids = ref.prompt_ids(model, "birds sing in the trees by the river and the cat sleeps")
    body = post(server, "/v1/completions", prompt=ids, max_tokens=6, truncate_prompt_tokens=5,
                return_token_ids=True, echo=True)
    choice = body["choices"][0]
    assert choice["prompt_token_ids"] == ids[-5:] and body["usage"]["prompt_tokens"] == 5
    assert choice["token_ids"] == ref.greedy_ids(model, ids[-5:], 6)
    assert choice["text"].startswith(ref.load(model)[0].decode(ids[-5:]))


def test_truncate_prompt_tokens_minus_one_is_the_models_length(server: Server,
                                                              model: Path) -> None:
    """vLLM's -1: as many of the last tokens as max-model-len holds beside max_tokens (it was a
    400 'must be at least 1'); a length over max-model-len is a 400 naming the field (it was
    taken, and the prompt refused as too long)."""
    limit = server.get_json("/v1/models")[1]["data"][0]["max_model_len"]
    ids = ref.prompt_ids(model, "the lazy dog jumps over the fox " * 120)
    assert len(ids) > limit
    body = post(server, "/v1/completions", prompt=ids, max_tokens=4, truncate_prompt_tokens=-1,
                return_token_ids=True)
    assert body["choices"][0]["prompt_token_ids"] == ids[-(limit - 4):]
    assert body["usage"]["prompt_tokens"] == limit - 4
    chat = post(server, "/v1/chat/completions", messages=USER, max_tokens=2,
                truncate_prompt_tokens=-1)
    assert chat["usage"]["prompt_tokens"] < limit
    for path, doc in (("/v1/completions", {"prompt": "hi"}), ("/v1/chat/completions",
                                                             {"messages": USER})):
        status, err = server.post_json(path, {**doc, "max_tokens": 2,
                                              "truncate_prompt_tokens": limit + 1})
        assert status == 400 and err["error"]["param"] == "truncate_prompt_tokens", err
        assert f"({limit + 1}) is greater than the model's maximum length ({limit})" in \
            err["error"]["message"]
    status, err = server.post_json("/v1/completions", {"prompt": "hi", "max_tokens": 2,
                                                       "truncate_prompt_tokens": -2})
    assert status == 400 and err["error"]["param"] == "truncate_prompt_tokens", err
    assert server.post_json("/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200


def test_stop_strings_special_tokens_and_allowed_ids(server: Server, model: Path) -> None:
    plain = post(server, "/v1/completions", prompt="the quick brown fox", max_tokens=24,
                 ignore_eos=True)["choices"][0]["text"]
    stop = plain[8:11]
    assert stop.strip() and plain.find(stop) == 8
    cut = post(server, "/v1/completions", prompt="the quick brown fox", max_tokens=24,
               ignore_eos=True, stop=[stop])["choices"][0]["text"]
    kept = post(server, "/v1/completions", prompt="the quick brown fox", max_tokens=24,
                ignore_eos=True, stop=[stop],
                include_stop_str_in_output=True)["choices"][0]["text"]
    assert (cut, kept) == (plain[:8], plain[:11])
    tok = ref.load(model)[0]
    bos = tok.bos_token_id
    forced = {"prompt": "the quick brown fox", "max_tokens": 3, "ignore_eos": True,
              "allowed_token_ids": [bos]}
    assert post(server, "/v1/completions", **forced)["choices"][0]["text"] == ""
    shown = post(server, "/v1/completions", skip_special_tokens=False, **forced)
    assert shown["choices"][0]["text"] == tok.bos_token * 3
    few = [tok.convert_tokens_to_ids(t) for t in ("he", "at", "Ġdog")]
    assert len(set(few)) == 3 and tok.unk_token_id not in few
    sampled = post(server, "/v1/completions", prompt="a", max_tokens=16, ignore_eos=True,
                   temperature=1.0, seed=2, allowed_token_ids=few, return_token_ids=True)
    assert set(sampled["choices"][0]["token_ids"]) <= set(few)
    status, body = server.post_json("/v1/completions", {"prompt": "a",
                                                        "allowed_token_ids": []})
    assert status == 400 and body["error"]["param"] == "allowed_token_ids"


def test_bad_words_are_never_generated(server: Server, model: Path) -> None:
    """vLLM's ``bad_words``: the words the greedy answer used, barred, appear nowhere in the
    new answer (as written or after a space); the answer changes where they were."""
    tok = ref.load(model)[0]
    doc = {"prompt": "the quick brown fox", "max_tokens": 24, "ignore_eos": True,
           "return_token_ids": True}
    plain = post(server, "/v1/completions", **doc)["choices"][0]
    words = [w for w in plain["text"].split() if len(w) > 2][:3]
    assert words
    barred = post(server, "/v1/completions", bad_words=words, **doc)["choices"][0]
    assert barred["token_ids"] != plain["token_ids"]
    out = barred["token_ids"]
    for word in words:
        for form in (word, " " + word):
            seq = tok(form, add_special_tokens=False)["input_ids"]
            assert not any(out[i:i + len(seq)] == seq for i in range(len(out))), (form, out)
    status, body = server.post_json("/v1/completions", {"prompt": "a", "bad_words": [" "]})
    assert status == 400 and body["error"]["param"] == "bad_words"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_streamed_token_ids_add_up_to_the_answers(server: Server, path: str) -> None:
    """vLLM's return_token_ids, streamed: the prompt's ids on the first chunk (chat: at its
    top; completions: in its choice), each chunk's own tokens on it; together, the whole
    answer's (the EOS or stop token on the finishing chunk)."""
    from .conftest import stream_events

    chat = path.endswith("chat/completions")
    doc: dict[str, Any] = {"max_tokens": 24, "temperature": 0, "return_token_ids": True,
                           "stop_token_ids": [], **({"messages": [
                               {"role": "user", "content": "the quick brown fox"}]}
                               if chat else {"prompt": "the quick brown fox"})}
    whole = post(server, path, **doc)
    prompt = whole["prompt_token_ids"] if chat else whole["choices"][0]["prompt_token_ids"]
    want = whole["choices"][0]["token_ids"]
    for extra in ({}, {"logprobs": True, "top_logprobs": 1} if chat else {"logprobs": 1},
                  {"stop_token_ids": [want[5]]}):
        events = stream_events(server, path, {**doc, **extra, "stream": True})
        first = events[0] if chat else events[0]["choices"][0]
        assert first["prompt_token_ids"] == prompt
        ids = [t for e in events for c in e["choices"] for t in c.get("token_ids", [])]
        cut = want.index(want[5]) + 1 if extra.get("stop_token_ids") else len(want)
        assert ids == want[:cut], extra
        assert all("prompt_token_ids" not in c for e in events[1:] for c in e["choices"])
    if not chat:  # with echo, the echo chunk is the first, and carries the prompt's ids
        events = stream_events(server, path, {**doc, "echo": True, "stream": True})
        assert events[0]["choices"][0]["text"] == "the quick brown fox"
        assert events[0]["choices"][0]["prompt_token_ids"] == prompt
        assert [t for e in events for c in e["choices"] for t in c.get("token_ids", [])] == want


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_continuous_usage_stats_put_the_usage_on_every_chunk(server: Server, path: str) -> None:
    """vLLM's stream_options.continuous_usage_stats: each chunk carries its choice's usage so
    far, which grows by the chunk's tokens and ends at the final usage."""
    from .conftest import stream_events

    chat = path.endswith("chat/completions")
    doc: dict[str, Any] = {
        "max_tokens": 12, "temperature": 0, "stream": True, "return_token_ids": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        **({"messages": [{"role": "user", "content": "the quick brown fox"}]} if chat
           else {"prompt": "the quick brown fox"})}
    events = stream_events(server, path, doc)
    *chunks, final = events
    assert final["choices"] == [] and final["usage"]["completion_tokens"] > 0
    seen = 0
    for chunk in chunks:
        usage = chunk["usage"]
        seen += len(chunk["choices"][0].get("token_ids", []))
        assert usage["prompt_tokens"] == final["usage"]["prompt_tokens"]
        assert usage["completion_tokens"] == seen
        assert usage["total_tokens"] == usage["prompt_tokens"] + seen
    assert seen == final["usage"]["completion_tokens"]
    # without it, the chunks' usage stays null
    plain = stream_events(server, path, {**doc, "stream_options": {"include_usage": True}})
    assert all(e["usage"] is None for e in plain[:-1])
    status, body = server.post_json(path, {**doc, "stream_options": {
        "include_usage": True, "continuous_usage_stats": "yes"}})
    assert status == 400 and body["error"]["param"] == "continuous_usage_stats"


def test_echo_on_chat_repeats_the_continued_message(server: Server) -> None:
    """vLLM's chat echo: the answer starts with the last message's content when that message
    is the assistant's (continue_final_message), streamed as its own first content chunk."""
    from .conftest import stream_events

    start = "the cat sat"
    doc: dict[str, Any] = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": start}],
        "add_generation_prompt": False, "continue_final_message": True, "max_tokens": 8,
        "temperature": 0, "ignore_eos": True}
    plain = post(server, "/v1/chat/completions", **doc)["choices"][0]["message"]["content"]
    echoed = post(server, "/v1/chat/completions", **doc, echo=True)
    assert echoed["choices"][0]["message"]["content"] == start + plain
    assert echoed["usage"]["completion_tokens"] == 8  # the echo is not generated
    events = stream_events(server, "/v1/chat/completions", {**doc, "echo": True,
                                                             "stream": True})
    pieces = [e["choices"][0]["delta"].get("content") or "" for e in events]
    assert pieces[1] == start and "".join(pieces) == start + plain
    # a user's last message is not the answer's: nothing to echo
    asked = post(server, "/v1/chat/completions", messages=[{"role": "user", "content": "hi"}],
                 max_tokens=4, temperature=0, echo=True)["choices"][0]["message"]["content"]
    assert asked == post(server, "/v1/chat/completions",
                         messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                         temperature=0)["choices"][0]["message"]["content"]


def test_a_server_in_arrival_order_refuses_a_priority(server: Server) -> None:
    status, body = server.post_json("/v1/completions", {"prompt": "a", "priority": 3})
    assert status == 400 and body["error"]["param"] == "priority", body
    assert "--scheduling-policy priority" in body["error"]["message"]
    assert post(server, "/v1/completions", prompt="a", max_tokens=2, priority=0)["choices"]


def test_return_tokens_as_token_ids_names_the_logprobs_by_id(server: Server) -> None:
    """vLLM's return_tokens_as_token_ids: every token of the logprobs (the echoed prompt's, the
    answer's and the alternatives) is ``token_id:N``; the logprobs and the completions'
    text_offset (into the text) are those of the same request without it."""
    from .conftest import stream_events

    def named(ids: list[int]) -> list[str]:
        return [f"token_id:{i}" for i in ids]

    doc = {"prompt": "the quick brown fox", "max_tokens": 6, "logprobs": 2, "echo": True,
           "return_token_ids": True}
    plain = post(server, "/v1/completions", **doc)["choices"][0]
    by_id = post(server, "/v1/completions", **doc, return_tokens_as_token_ids=True)["choices"][0]
    lps = by_id["logprobs"]
    assert lps["tokens"] == named(by_id["prompt_token_ids"] + by_id["token_ids"])
    assert lps["token_logprobs"] == plain["logprobs"]["token_logprobs"]
    assert lps["text_offset"] == plain["logprobs"]["text_offset"]
    assert by_id["text"] == plain["text"]
    for tops, plain_tops in zip(lps["top_logprobs"][1:], plain["logprobs"]["top_logprobs"][1:],
                                strict=True):
        assert all(re.fullmatch(r"token_id:\d+", k) for k in tops), tops
        # by text, alternatives that decode alike (U+FFFD, a piece of a character) share a key
        assert set(plain_tops.values()) <= set(tops.values()) and len(tops) >= len(plain_tops)
    chat = {"messages": USER, "max_tokens": 6, "logprobs": True, "top_logprobs": 2,
            "return_token_ids": True, "return_tokens_as_token_ids": True}
    answer = post(server, "/v1/chat/completions", **chat)["choices"][0]
    content = answer["logprobs"]["content"]
    assert [c["token"] for c in content] == named(answer["token_ids"])
    assert all(c["bytes"] == list(c["token"].encode()) and len(c["top_logprobs"]) == 2 and
               all(re.fullmatch(r"token_id:\d+", t["token"]) for t in c["top_logprobs"])
               for c in content)
    events = stream_events(server, "/v1/chat/completions", {**chat, "temperature": 0,
                                                            "stream": True})
    streamed = [c["token"] for e in events for ch in e["choices"]
                for c in (ch.get("logprobs") or {}).get("content", [])]
    assert streamed == named(answer["token_ids"])
    status, body = server.post_json("/v1/completions", {"prompt": "a", "logprobs": 1,
                                                        "return_tokens_as_token_ids": "yes"})
    assert status == 400 and body["error"]["param"] == "return_tokens_as_token_ids"
