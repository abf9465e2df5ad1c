"""Completions with several prompts, ``echo`` and prompt logprobs, served: a batch of prompts
is answered as one choice per prompt and ``n`` (OpenAI's numbering), each equal to its prompt
sent alone; ``echo`` with ``max_tokens: 0`` and ``logprobs`` (how evaluation harnesses score a
text) gives the prompt's logprobs as the model's own forward has them; vLLM's
``prompt_logprobs`` on completions and chat."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import load_hf
from kubemaas_runtime.metrics import LLMMetrics
from kubemaas_runtime.protocol.openai_engine import Served, submit
from kubemaas_runtime.protocol.openai_errors import ApiError
from kubemaas_runtime.protocol.openai_schema import parse_request

from . import llm_reference as ref
from .conftest import Server, start_llm_server, stream_events

PROMPTS = ["the quick brown fox", "birds sing in the trees by the river and the cat sleeps",
           "the lazy dog"]


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    server = start_llm_server(tiny_llama, "--max-num-batched-tokens", "16", "--max-num-seqs", "16")
    yield server
    assert server.stop() == 0


def complete(server: Server, **doc: Any) -> dict[str, Any]:
    status, body = server.post_json("/v1/completions", {"temperature": 0, **doc})
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def test_a_batch_of_prompts_answers_each_as_if_alone(server: Server, client: openai.OpenAI,
                                                     tiny_llama: Path) -> None:
    """Three prompts, n = 2: six choices numbered prompt by prompt, each the greedy answer of
    its prompt; usage counts each prompt once; token-id prompts give the same; the stream
    carries the same texts under the same indexes; the openai client reads it unchanged."""
    ids = [ref.prompt_ids(tiny_llama, p) for p in PROMPTS]
    want = [ref.greedy_ids(tiny_llama, p, 8) for p in ids]
    body = complete(server, prompt=PROMPTS, max_tokens=8, n=2, return_token_ids=True)
    choices = body["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    assert [c["prompt_token_ids"] for c in choices] == [p for p in ids for _ in range(2)]
    assert [c["token_ids"] for c in choices] == [w for w in want for _ in range(2)]
    assert body["usage"]["prompt_tokens"] == sum(map(len, ids))
    assert body["usage"]["completion_tokens"] == 2 * sum(map(len, want))
    texts = [c["text"] for c in choices]
    assert [c["text"] for c in complete(server, prompt=ids, max_tokens=8, n=2)["choices"]] == \
        texts
    events = stream_events(server, "/v1/completions", {
        "prompt": PROMPTS, "max_tokens": 8, "n": 2, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}})
    streamed = [""] * 6
    for event in events[:-1]:
        for choice in event["choices"]:
            streamed[choice["index"]] += choice["text"]
    assert streamed == texts
    assert events[-1]["usage"]["prompt_tokens"] == body["usage"]["prompt_tokens"]
    answer = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=8,
                                       temperature=0)
    assert [c.text for c in answer.choices] == texts[::2]


def test_echo_without_generation_scores_the_prompt(server: Server, tiny_llama: Path) -> None:
    """``echo``, ``max_tokens: 0``, ``logprobs: 1`` (a harness's loglikelihood request): the
    prompt's text back, its first token without a logprob, every other token's logprob the
    forward's, beside the most likely's (whether it was the most likely); no token
    generated."""
    text = PROMPTS[1]
    ids = ref.prompt_ids(tiny_llama, text)
    body = complete(server, prompt=text, echo=True, max_tokens=0, logprobs=1)
    (choice,) = body["choices"]
    assert choice["text"] == text and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["prompt_tokens"] == len(ids)
    lps = choice["logprobs"]
    assert len(lps["tokens"]) == len(ids) and lps["token_logprobs"][0] is None
    assert lps["top_logprobs"][0] is None
    forward = ref.prompt_logprobs(tiny_llama, ids)
    want = forward.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert torch.allclose(torch.tensor(lps["token_logprobs"][1:]), want, atol=1e-4)
    # each token's top: the token itself and the most likely (one entry when they are one)
    for p, (token, top) in enumerate(zip(lps["tokens"][1:], lps["top_logprobs"][1:],
                                         strict=True)):
        assert 1 <= len(top) <= 2 and math.isclose(top[token], float(want[p]), abs_tol=1e-4)
        assert math.isclose(max(top.values()), float(forward[p].max()), abs_tol=1e-4)
    # as lm-evaluation-harness asks: a batch of token-id prompts, one token generated each,
    # the prompt's logprobs read from the echoed lists (the generated token last)
    ids_batch = [ref.prompt_ids(tiny_llama, p) for p in PROMPTS]
    body = complete(server, prompt=ids_batch, echo=True, max_tokens=1, logprobs=1, seed=1234)
    for choice, ids in zip(body["choices"], ids_batch, strict=True):
        lps = choice["logprobs"]
        assert len(lps["token_logprobs"]) == len(ids) + 1
        forward = ref.prompt_logprobs(tiny_llama, ids)
        want = forward.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert torch.allclose(torch.tensor(lps["token_logprobs"][1:-1]), want, atol=1e-4)


def test_echo_with_generation(server: Server, tiny_llama: Path) -> None:
    """``echo`` with tokens to generate: the prompt, then the answer the request gets without
    echo; its logprobs are the prompt's then the answer's; streamed, the echoed prompt comes
    first and the chunks concatenate to the same text; a token-id prompt is echoed as its
    text."""
    text = PROMPTS[0]
    plain = complete(server, prompt=text, max_tokens=6, logprobs=2)["choices"][0]
    echoed = complete(server, prompt=text, max_tokens=6, logprobs=2, echo=True)["choices"][0]
    assert echoed["text"] == text + plain["text"]
    n = len(ref.prompt_ids(tiny_llama, text))
    lps = echoed["logprobs"]
    assert lps["token_logprobs"][n:] == pytest.approx(plain["logprobs"]["token_logprobs"])
    assert len(lps["tokens"]) == n + len(plain["logprobs"]["tokens"])
    events = stream_events(server, "/v1/completions", {
        "prompt": text, "max_tokens": 6, "temperature": 0, "echo": True, "stream": True})
    chunks = [e["choices"][0]["text"] for e in events]
    assert chunks[0] == text and "".join(chunks) == echoed["text"]
    ids = ref.prompt_ids(tiny_llama, text)
    by_ids = complete(server, prompt=ids, max_tokens=6, echo=True)["choices"][0]
    assert by_ids["text"] == ref.load(tiny_llama)[0].decode(ids) + plain["text"]


def test_prompt_logprobs_on_completions_and_chat(server: Server, tiny_llama: Path) -> None:
    """vLLM's ``prompt_logprobs``: per choice on completions, once for the answer on chat; a
    null for the first token, then the prompt token's logprob and rank and the k most likely,
    keyed by token id; the generated answer does not change."""
    text = PROMPTS[2]
    ids = ref.prompt_ids(tiny_llama, text)
    forward = ref.prompt_logprobs(tiny_llama, ids)
    plain = complete(server, prompt=text, max_tokens=4)["choices"][0]
    body = complete(server, prompt=text, max_tokens=4, prompt_logprobs=2)
    choice = body["choices"][0]
    assert choice["text"] == plain["text"] and choice["logprobs"] is None
    scores = choice["prompt_logprobs"]
    assert len(scores) == len(ids) and scores[0] is None
    for p, entry in enumerate(scores[1:]):
        token = ids[p + 1]
        assert math.isclose(entry[str(token)]["logprob"], float(forward[p, token]),
                            abs_tol=1e-4)
        top = torch.topk(forward[p], 2).indices.tolist()
        assert {str(t) for t in top} <= set(entry) <= {str(t) for t in top} | {str(token)}
        assert entry[str(top[0])]["rank"] == 1
    chat = {"messages": [{"role": "user", "content": text}], "max_tokens": 3,
            "temperature": 0, "prompt_logprobs": 0, "return_token_ids": True}
    status, body = server.post_json("/v1/chat/completions", chat)
    assert status == 200, body
    chat_ids = body["prompt_token_ids"]
    chat_forward = ref.prompt_logprobs(tiny_llama, chat_ids)
    assert body["prompt_logprobs"][0] is None and len(body["prompt_logprobs"]) == len(chat_ids)
    for p, entry in enumerate(body["prompt_logprobs"][1:]):
        (key, value), = entry.items()  # k = 0: the prompt token alone
        assert key == str(chat_ids[p + 1])
        assert math.isclose(value["logprob"], float(chat_forward[p, chat_ids[p + 1]]),
                            abs_tol=1e-4)


def test_a_batch_the_queue_cannot_take_whole_leaves_nothing(tiny_llama: Path) -> None:
    """All the choices of a batch or none: with 6 of 8 places held, a batch of two prompts x 2
    gets 429 and the two sequences that went in are cancelled."""
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    engine = Engine(lm, EngineConfig(kv_cache_bytes=4 << 20, max_model_len=256, max_queue=8))
    served = Served(engine, LLMMetrics("tiny", 16, 100), lm.tokenizer, 256,
                    lm.model.config.vocab_size)
    req = parse_request({"prompt": [[5, 6], [7, 8]], "n": 2}, False, served.vocab_size)
    engine.room.held = 6
    with pytest.raises(ApiError) as refused:
        submit(served, req, [[5, 6], [7, 8]], [req.params] * 2, ["", ""])
    assert refused.value.status == 429
    posted = [what for what, _ in engine._inbox]
    assert posted == ["add", "add", "abort", "abort"]
