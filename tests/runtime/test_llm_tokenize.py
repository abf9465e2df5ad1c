"""vLLM's ``POST /tokenize`` and ``POST /detokenize`` on the LLM server: the tokenizer's own ids
(a prompt with its special tokens, a chat rendered by the chat template without them), the
token strings, the text back, and the errors of the other endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import llm_reference as ref
from .conftest import Server, start_llm_server


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    server = start_llm_server(tiny_llama)
    yield server
    assert server.stop() == 0


def test_tokenize_a_prompt_and_a_chat(server: Server, tiny_llama: Path) -> None:
    tok, _ = ref.load(tiny_llama)
    status, doc = server.post_json("/tokenize", {"model": "tiny", "prompt": "the lazy dog",
                                                 "return_token_strs": True})
    assert status == 200, doc
    ids = ref.prompt_ids(tiny_llama, "the lazy dog")
    assert doc["tokens"] == ids and doc["count"] == len(ids)
    assert doc["token_strs"] == tok.convert_ids_to_tokens(ids) and doc["max_model_len"] > 0
    messages = [{"role": "user", "content": "the lazy dog"}]
    status, chat = server.post_json("/tokenize", {"messages": messages})
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert status == 200 and chat["token_strs"] is None
    assert chat["tokens"] == tok(rendered, add_special_tokens=False)["input_ids"]
    status, done = server.post_json("/v1/chat/completions", {"messages": messages,
                                                             "max_tokens": 1})
    assert done["usage"]["prompt_tokens"] == chat["count"]  # what the chat endpoint reads
    status, bare = server.post_json("/tokenize", {"messages": messages,
                                                  "add_generation_prompt": False})
    assert status == 200 and bare["count"] < chat["count"]


def test_detokenize_gives_the_text_back(server: Server, tiny_llama: Path) -> None:
    tok, _ = ref.load(tiny_llama)
    ids = ref.prompt_ids(tiny_llama, "birds sing in the trees")
    status, doc = server.post_json("/detokenize", {"model": "tiny", "tokens": ids})
    assert status == 200 and doc == {"prompt": tok.decode(ids)}


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/tokenize", {"prompt": 5}, 400, "prompt"),
    ("/tokenize", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ("/tokenize", {"prompt": "hi", "model": "other"}, 404, "model"),
    ("/tokenize", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "x"}]},
     400, "tools[0]"),
    # a template of the request's own was ignored: the ids of the model's template came back
    ("/tokenize", {"messages": [{"role": "user", "content": "hi"}],
                   "chat_template": "{{ messages[0]['content'] }}"}, 400, "chat_template"),
    ("/detokenize", {"tokens": [1, 99999]}, 400, "tokens"),
    ("/detokenize", {"tokens": "1 2"}, 400, "tokens"),
])
def test_bad_requests(server: Server, path: str, body: dict[str, object], status: int,
                      param: str) -> None:
    got, doc = server.post_json(path, body)
    assert got == status and doc["error"]["param"] == param, doc
    got, _, _ = server.request("GET", path)
    assert got == 405
