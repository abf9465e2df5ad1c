"""The OpenAI requests as the server reads them (parse_request, parse_responses: fields,
defaults, validation) and the streamed chunks it pre-renders, without a model."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubemaas_runtime.protocol.openai_errors import ApiError
from kubemaas_runtime.protocol.openai_lora import shown_uri
from kubemaas_runtime.protocol.openai_responses import parse_responses
from kubemaas_runtime.protocol.openai_schema import Prompt, parse_request
from kubemaas_runtime.protocol.openai_stream import ChunkFormat, sse


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("usage", [True, False])
def test_pre_rendered_token_chunks_equal_the_documents(chat: bool, usage: bool) -> None:
    body: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": usage}}
    body.update({"messages": [{"role": "user", "content": "x"}]} if chat else {"prompt": "x"})
    fmt = ChunkFormat({"id": "cmpl-1", "created": 7, "model": 'm "q" \u00e9'},
                      parse(body, chat=chat), tokenizer=None)
    for text in ["", "a", 'say "hi"\n', "é猫🙂", "\x00\\", "</script>"]:
        got = fmt.token(text, (), 0)
        assert got == sse(fmt.doc(text, None)), text
        assert json.loads(got[len(b"data: "):])["choices"][0][
            "delta" if chat else "text"] == ({"content": text} if chat else text)


def parse(doc: dict[str, Any], chat: bool = False) -> Any:
    return parse_request(doc, chat, vocab=100)


def test_openai_prompts_echo_and_prompt_logprobs() -> None:
    assert parse({"prompt": [1, 2, 3]}).prompts == (Prompt(None, [1, 2, 3]),)
    assert parse({"prompt": ["only"]}).prompts == (Prompt("only", None),)
    assert parse({"prompt": ["a", "b"]}).prompts == (Prompt("a", None), Prompt("b", None))
    assert parse({"prompt": [[1], [2, 3]]}).prompts == (Prompt(None, [1]), Prompt(None, [2, 3]))
    echoed = parse({"prompt": "hi", "echo": True, "max_tokens": 0, "logprobs": 2})
    assert (echoed.echo, echoed.params.max_tokens, echoed.params.prompt_logprobs) == (True, 0, 2)
    assert not echoed.prompt_logprobs  # the field was not sent: the echo carries them
    assert parse({"prompt": "hi", "echo": True}).params.prompt_logprobs is None
    scored = parse({"messages": [{"role": "user", "content": "a"}], "prompt_logprobs": 0},
                   chat=True)
    assert scored.prompt_logprobs and scored.params.prompt_logprobs == 0


def test_a_messages_text_parts_are_joined_by_newlines_as_vllm_joins_them() -> None:
    """Two text parts were one string run together ("ab"); vLLM puts a newline between them,
    in a chat message as in a Responses input item."""
    parts = [{"type": "text", "text": "Hello."}, {"type": "text", "text": "Bye."}]
    chat = parse({"messages": [{"role": "user", "content": parts}]}, chat=True)
    assert chat.messages == [{"role": "user", "content": "Hello.\nBye."}]
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Hello."},
                                          {"type": "input_text", "text": "Bye."}]}]
    assert parse_responses({"input": items}).chat["messages"] == chat.messages


# bad requests and the field each 400 names
BAD_REQUESTS = (
    ({"prompt": "hi", "cache_salt": ""}, "cache_salt"),
    ({"prompt": "hi", "cache_salt": 7}, "cache_salt"),
    ({"prompt": "hi", "max_tokens": True}, "max_tokens"),
    ({"prompt": "hi", "seed": "1"}, "seed"),
    ({"prompt": [1, 200]}, "prompt"),
    ({"prompt": "hi", "stop_token_ids": [-1]}, "stop_token_ids"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),  # 0: with echo
    ({"prompt": "hi", "echo": True, "max_tokens": -1}, "max_tokens"),
    ({"prompt": ["hi", [1]]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[1], []]}, "prompt"),
    ({"prompt": "hi", "prompt_logprobs": 21}, "prompt_logprobs"),
    ({"prompt": "hi", "presence_penalty": 2.5}, "presence_penalty"),
    ({"prompt": "hi", "frequency_penalty": "1"}, "frequency_penalty"),
    ({"prompt": "hi", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "hi", "repetition_penalty": 1e-300}, "repetition_penalty"),
    ({"prompt": "hi", "min_p": 1.5}, "min_p"),
    ({"prompt": "hi", "min_tokens": 5, "max_tokens": 4}, "min_tokens"),
    ({"prompt": "hi", "min_tokens": -1}, "min_tokens"),
    ({"prompt": "hi", "use_beam_search": 1}, "use_beam_search"),
    ({"prompt": "hi", "use_beam_search": True, "stop": "x"}, "stop"),
    ({"prompt": "hi", "use_beam_search": True, "min_tokens": 1}, "min_tokens"),
    ({"prompt": "hi", "length_penalty": 2}, "length_penalty"),
    ({"prompt": "hi", "skip_special_tokens": 0}, "skip_special_tokens"),
    ({"prompt": "hi", "spaces_between_special_tokens": False}, "spaces_between_special_tokens"),
    ({"prompt": "hi", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"prompt": "hi", "allowed_token_ids": [100]}, "allowed_token_ids"),
    ({"prompt": "hi", "bad_words": "x"}, "bad_words"),
    ({"prompt": "hi", "stop": ["x", ""]}, "stop"),  # vLLM's 400
    ({"prompt": "hi", "stop": ""}, "stop"),
    ({"prompt": "hi", "guided_json": 5}, "guided_json"),
    ({"prompt": "hi", "n": 0}, "n"),
    ({"prompt": "hi", "n": 33}, "n"),
)


def test_openai_request_validation() -> None:
    req = parse({"prompt": "hi"})
    assert req.params.max_tokens == 16 and req.params.temperature == 1.0 and not req.stream
    assert parse({"prompt": "hi", "max_tokens": None}).max_tokens is None
    chat = parse({"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                 {"type": "text", "text": "b"}]},
                               {"role": "assistant", "content": None}],
                  "logprobs": True, "top_logprobs": 3, "top_k": -1, "stop": "x"}, chat=True)
    assert chat.messages == [{"role": "system", "content": "a\nb"},
                             {"role": "assistant", "content": ""}]
    assert chat.params.logprobs == 3 and chat.params.top_k == 0 and chat.params.stop == ("x",)
    assert chat.max_tokens is None and chat.cache_salt is None
    assert parse({"prompt": "hi", "cache_salt": "tenant-a"}).cache_salt == "tenant-a"
    penalized = parse({"prompt": "hi", "presence_penalty": -0.5, "frequency_penalty": 2,
                       "repetition_penalty": 1.2}).params
    assert (penalized.presence_penalty, penalized.frequency_penalty,
            penalized.repetition_penalty, penalized.penalized) == (-0.5, 2.0, 1.2, True)
    assert not parse({"prompt": "hi", "presence_penalty": 0}).params.penalized
    three = parse({"prompt": "hi", "n": 3, "seed": 2**63 - 2, "temperature": 0.5})
    assert three.n == 3 and [p.seed for p in three.choice_params()] == [2**63 - 2, 2**63 - 1, 0]
    assert parse({"prompt": "hi", "n": 2}).choice_params() == [parse({"prompt": "hi"}).params] * 2
    mins = parse({"prompt": "hi", "min_p": 0.1, "min_tokens": 4, "max_tokens": 4}).params
    assert (mins.min_p, mins.min_tokens) == (0.1, 4)
    assert parse({"prompt": "hi", "skip_special_tokens": True, "bad_words": []}).params
    assert ApiError(429, "busy").body()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(("bad", "param"), BAD_REQUESTS)
def test_a_bad_request_is_a_400_naming_its_field(bad: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as err:
        parse(bad)
    assert err.value.status == 400 and err.value.param == param


def test_the_server_default_of_return_tokens_as_token_ids() -> None:
    """--return-tokens-as-token-ids sets the default; a request's own field wins."""
    doc = {"prompt": "x", "logprobs": 1}
    assert not parse_request(doc, False, 100).tokens_as_ids
    assert parse_request(doc, False, 100, tokens_as_ids=True).tokens_as_ids
    assert not parse_request({**doc, "return_tokens_as_token_ids": False}, False, 100,
                             tokens_as_ids=True).tokens_as_ids
    assert parse_request({**doc, "return_tokens_as_token_ids": True}, False, 100).tokens_as_ids


def test_logit_bias_keys_naming_one_token_are_one_entry() -> None:
    # "5" and "05" are token 5 twice: the last wins (as in vLLM), rather than two writes to one
    # logit whose order CUDA does not define
    doc = {"prompt": "a", "logit_bias": {"5": 10, "05": -10, "7": 1}}
    assert parse_request(doc, False, 100).params.logit_bias == ((5, -10.0), (7, 1.0))


def test_a_model_cards_root_shows_no_credentials() -> None:
    """/v1/models shows where the model came from (vLLM's root), never a secret in the URI."""
    assert shown_uri("/models/tiny") == "/models/tiny"
    assert shown_uri("s3://bucket/llm/") == "s3://bucket/llm/"
    assert shown_uri("https://user:pw@host:8443/llm/?X-Amz-Signature=abc#f") == \
        "https://host:8443/llm/"
    assert shown_uri("http://token@host/m?x=1") == "http://host/m"
