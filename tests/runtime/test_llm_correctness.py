"""Language models over the OpenAI API: the runtime's greedy answers equal transformers'
``generate()`` token for token, alone and in a batch of 16 concurrent requests of different
lengths (prompts longer than one prefill chunk included); streaming gives the same text; the same
seed gives the same sample; stop strings, chat template, logprobs, /v1/models and the vLLM-named
metrics.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from . import llm_reference as ref
from .conftest import Server, start_llm_server, stream_events

SENTENCE = ("the quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun "
            "and birds sing in the trees by the river")
WORDS = SENTENCE.split()


def prompt_text(i: int) -> str:
    """Prompts of different lengths; some are longer than the 32-token prefill chunk."""
    n = 1 + (i * 5) % len(WORDS)
    return " ".join(WORDS[:n]) + (" " + " ".join(WORDS)) * (i % 4)


@pytest.fixture(scope="module")
def llama_server(tiny_llama: Path) -> Iterator[Server]:
    # a small token budget per step: long prompts are read in several chunks beside decodes
    server = start_llm_server(tiny_llama, "--max-num-batched-tokens", "32", "--max-num-seqs",
                              "16")
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def gpt2_server(tiny_gpt2: Path) -> Iterator[Server]:
    server = start_llm_server(tiny_gpt2)
    yield server
    assert server.stop() == 0


def complete(server: Server, prompt: str | list[int], **extra: Any) -> dict[str, Any]:
    doc = {"model": "tiny", "prompt": prompt, "temperature": 0, "return_token_ids": True,
           **extra}
    status, body = server.post_json("/v1/completions", doc)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def engine_ids(body: dict[str, Any], eos: int) -> list[int]:
    """The output ids, which like generate()'s (and vLLM's) end with the EOS that stopped them."""
    choice = body["choices"][0]
    ids = list(choice["token_ids"])
    if choice["finish_reason"] == "stop":
        assert ids and ids[-1] == eos, f"a sequence stopped by EOS must return it: {ids}"
    return ids


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_one_request_equals_generate(family: str, request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue(f"{family}_server")
    model_dir: Path = request.getfixturevalue(f"tiny_{family}")
    for i in (0, 3):  # a short prompt and one read in several chunks
        text = prompt_text(i)
        body = complete(server, text, max_tokens=24)
        want = ref.greedy_ids(model_dir, ref.prompt_ids(model_dir, text), 24)
        assert body["choices"][0]["prompt_token_ids"] == ref.prompt_ids(model_dir, text)
        assert engine_ids(body, ref.eos_id(model_dir)) == want
        assert body["usage"]["prompt_tokens"] == len(body["choices"][0]["prompt_token_ids"])
        assert body["usage"]["completion_tokens"] == len(body["choices"][0]["token_ids"])


def test_sixteen_concurrent_requests_equal_generate(llama_server: Server,
                                                    tiny_llama: Path) -> None:
    prompts = [prompt_text(i) for i in range(16)]
    lengths = [8 + (i * 7) % 25 for i in range(16)]
    assert len({len(ref.prompt_ids(tiny_llama, p)) for p in prompts}) >= 8
    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda pl: complete(llama_server, pl[0], max_tokens=pl[1]),
                               zip(prompts, lengths, strict=True)))
    eos = ref.eos_id(tiny_llama)
    for text, n, body in zip(prompts, lengths, bodies, strict=True):
        assert engine_ids(body, eos) == ref.greedy_ids(tiny_llama, ref.prompt_ids(tiny_llama, text),
                                                       n), text
    # the batch really ran together: several sequences were running in one step
    peak = re.search(r'kubemaas_llm_peak_running_requests\{model_name="tiny"\} (\d+)',
                     llama_server.metrics())
    assert peak and int(peak.group(1)) >= 4, peak


def test_a_full_cache_makes_requests_wait_or_recompute_not_differ(tiny_llama: Path) -> None:
    """A KV cache of ~37 blocks of 16 tokens for 10 requests needing ~5 blocks each: admission
    holds some back, decodes that run out of blocks preempt the newest sequence (recomputed
    later), and every answer is still generate()'s."""
    server = start_llm_server(tiny_llama, "--kv-cache-memory", "1200Ki", "--max-num-seqs", "10")
    try:
        prompts = [prompt_text(i % 4 + 4) for i in range(10)]
        with ThreadPoolExecutor(10) as pool:
            bodies = list(pool.map(lambda p: complete(server, p, max_tokens=40), prompts))
        eos = ref.eos_id(tiny_llama)
        for text, body in zip(prompts, bodies, strict=True):
            assert engine_ids(body, eos) == ref.greedy_ids(
                tiny_llama, ref.prompt_ids(tiny_llama, text), 40)
        text = server.metrics()
        assert re.search(r'vllm:cache_config_info\{model_name="tiny",block_size="16",'
                         r'num_gpu_blocks="3\d"\} 1', text), text
        assert 'vllm:kv_cache_usage_perc{model_name="tiny"} 0' in text
        peak = re.search(r'kubemaas_llm_peak_running_requests\{model_name="tiny"\} (\d+)', text)
        preempted = re.search(r'vllm:num_preemptions_total\{model_name="tiny"\} (\d+)', text)
        assert peak and preempted
        print("peak running", peak.group(1), "preemptions", preempted.group(1))
        # the cache, not max-num-seqs, limited the batch: requests waited or were preempted
        assert int(peak.group(1)) < 10 or int(preempted.group(1)) > 0
    finally:
        assert server.stop() == 0


def prefix_cache_hits(server: Server) -> float:
    m = re.search(r'vllm:prefix_cache_hits_total\{model_name="tiny"\} (\S+)', server.metrics())
    assert m
    return float(m.group(1))


def test_shared_prefixes_reuse_cached_blocks(llama_server: Server, tiny_llama: Path) -> None:
    base = " ".join(WORDS) + " " + " ".join(reversed(WORDS))  # several full blocks
    assert len(ref.prompt_ids(tiny_llama, base)) > 48

    def hits() -> float:
        return prefix_cache_hits(llama_server)

    before = hits()
    complete(llama_server, base, max_tokens=2)  # computes and registers the prefix blocks
    prompts = [f"{base} and then {w}" for w in WORDS[:8]]
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda p: complete(llama_server, p, max_tokens=12), prompts))
    assert hits() - before >= 8 * 48
    eos = ref.eos_id(tiny_llama)
    for text, body in zip(prompts, bodies, strict=True):
        assert engine_ids(body, eos) == ref.greedy_ids(tiny_llama, ref.prompt_ids(tiny_llama, text),
                                                       12), text


def test_penalties_equal_their_references(llama_server: Server, tiny_llama: Path) -> None:
    """repetition_penalty as transformers' generate() applies it; frequency and presence
    penalties as OpenAI defines them (llm_reference writes them out); each changes the answer,
    and a batch of penalized and plain requests answers each as alone."""
    eos = ref.eos_id(tiny_llama)
    ids = ref.prompt_ids(tiny_llama, "the cat and the dog and the cat")
    plain = ref.greedy_ids(tiny_llama, ids, 24)
    cases = [({"repetition_penalty": 1.8},
              ref.greedy_ids_with_repetition_penalty(tiny_llama, ids, 24, 1.8)),
             ({"frequency_penalty": 1.5, "presence_penalty": 0.5},
              ref.greedy_ids_with_output_penalties(tiny_llama, ids, 24, 1.5, 0.5)),
             ({"presence_penalty": -2.0},
              ref.greedy_ids_with_output_penalties(tiny_llama, ids, 24, 0.0, -2.0)),
             ({}, plain)]
    assert all(want != plain for _, want in cases[:3])  # each penalty changes this answer
    with ThreadPoolExecutor(len(cases)) as pool:
        bodies = list(pool.map(lambda c: complete(llama_server, ids, max_tokens=24, **c[0]),
                               cases))
    for (extra, want), body in zip(cases, bodies, strict=True):
        assert engine_ids(body, eos) == want, extra


def test_a_vanishing_temperature_answers_greedily(llama_server: Server, tiny_llama: Path) -> None:
    """temperature 1e-40 (valid: 0..2) once made the sampler's softmax NaN, and the error failed
    every request of that engine step; below 1e-5 a request is greedy, as in vLLM."""
    ids = ref.prompt_ids(tiny_llama, "the lazy dog")
    want = ref.greedy_ids(tiny_llama, ids, 8)
    eos = ref.eos_id(tiny_llama)
    with ThreadPoolExecutor(3) as pool:
        bodies = list(pool.map(lambda t: complete(llama_server, ids, max_tokens=8,
                                                  temperature=t), (1e-40, 1e-300, 0)))
    assert [engine_ids(b, eos) for b in bodies] == [want] * 3


def test_min_tokens_holds_stops_back_as_generate_does(llama_server: Server,
                                                       tiny_llama: Path) -> None:
    """vLLM's ``min_tokens``: no EOS or stop token before that many tokens; the answer equals
    generate() with ``min_new_tokens``. (The tiny random model hardly ever ends with EOS, so a
    token of its own answer is the stop token.)"""
    ids = ref.prompt_ids(tiny_llama, "the quick brown fox")
    plain = ref.greedy_ids(tiny_llama, ids, 16)
    stop = plain[2]
    early = complete(llama_server, ids, max_tokens=16, stop_token_ids=[stop])["choices"][0]
    assert early["token_ids"] == plain[:plain.index(stop) + 1]
    assert early["finish_reason"] == "stop"
    want = ref.greedy_ids(tiny_llama, ids, 24, min_new_tokens=8, stop_ids=(stop,))
    assert stop not in want[:8] and len(want) > 8
    held = complete(llama_server, ids, max_tokens=24, min_tokens=8, stop_token_ids=[stop])
    assert held["choices"][0]["token_ids"] == want


def test_n_choices_streamed_and_not(llama_server: Server, tiny_llama: Path) -> None:
    """``n``: that many sequences from one prompt, each a choice with its index; usage counts
    the prompt once and every choice's tokens; a seeded choice i is the single request with
    seed + i (as vLLM seeds them), so choices differ and each is reproducible; the stream
    carries every choice's chunks, which concatenate to the same texts."""
    ids = ref.prompt_ids(tiny_llama, "the warm sun and the river")
    greedy = complete(llama_server, ids, max_tokens=10, n=3)
    assert [c["index"] for c in greedy["choices"]] == [0, 1, 2]
    want = ref.greedy_ids(tiny_llama, ids, 10)
    assert [c["token_ids"] for c in greedy["choices"]] == [want] * 3
    assert greedy["usage"]["prompt_tokens"] == len(ids)
    assert greedy["usage"]["completion_tokens"] == 3 * len(want)
    sampled = complete(llama_server, ids, max_tokens=10, n=3, temperature=1.0, seed=41)
    texts = [c["text"] for c in sampled["choices"]]
    assert len(set(texts)) > 1  # three draws of ten tokens from a random model's 1,024
    for i, text in enumerate(texts):
        alone = complete(llama_server, ids, max_tokens=10, temperature=1.0, seed=41 + i)
        assert alone["choices"][0]["text"] == text
    events = stream_events(llama_server, "/v1/completions", {
        "prompt": ids, "max_tokens": 10, "n": 3, "temperature": 1.0, "seed": 41,
        "stream": True, "stream_options": {"include_usage": True}})
    streamed = ["", "", ""]
    finished = set()
    for event in events[:-1]:
        for choice in event["choices"]:
            streamed[choice["index"]] += choice["text"]
            if choice["finish_reason"] is not None:
                finished.add(choice["index"])
    assert streamed == texts and finished == {0, 1, 2}
    assert events[-1]["usage"] == sampled["usage"]


def test_cache_salt_keeps_prefixes_apart(llama_server: Server, tiny_llama: Path) -> None:
    """vLLM's ``cache_salt``: cached prompt blocks are shared only between requests with the
    same salt (and between requests without one); the answers never change."""
    prompt = " ".join(reversed(WORDS)) + " " + " ".join(WORDS[::2])  # several full blocks
    ids = ref.prompt_ids(tiny_llama, prompt)
    assert len(ids) > 33  # two full blocks of 16 and the last token, never taken from a cache
    want = ref.greedy_ids(tiny_llama, ids, 6)
    eos = ref.eos_id(tiny_llama)

    def hits_of(**salt: str) -> float:
        before = prefix_cache_hits(llama_server)
        body = complete(llama_server, prompt, max_tokens=6, **salt)
        assert engine_ids(body, eos) == want
        hits = prefix_cache_hits(llama_server) - before
        assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": hits}
        return hits

    assert hits_of(cache_salt="tenant-a") == 0   # the first of its salt computes the prompt
    assert hits_of(cache_salt="tenant-b") == 0   # another salt does not see those blocks
    assert hits_of() == 0                        # nor does a request without one
    assert hits_of(cache_salt="tenant-a") >= 32  # the same salt does
    assert hits_of() >= 32
    status, body = llama_server.post_json("/v1/completions", {"prompt": prompt,
                                                              "cache_salt": ""})
    assert status == 400 and body["error"]["param"] == "cache_salt"


def test_streamed_chunks_concatenate_to_the_answer(llama_server: Server) -> None:
    doc = {"model": "tiny", "prompt": prompt_text(5), "max_tokens": 40, "temperature": 0}
    whole = complete(llama_server, doc["prompt"], max_tokens=40)["choices"][0]
    events = stream_events(llama_server, "/v1/completions",
                           {**doc, "stream": True, "stream_options": {"include_usage": True}})
    texts = [e["choices"][0]["text"] for e in events if e["choices"]]
    assert "".join(texts) == whole["text"]
    assert events[-2]["choices"][0]["finish_reason"] == whole["finish_reason"]
    assert all(e["object"] == "text_completion" for e in events)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == len(
        whole["token_ids"])

    chat = {"model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Tell me a story."}],
            "max_tokens": 30, "temperature": 0}
    status, answer = llama_server.post_json("/v1/chat/completions", chat)
    assert status == 200
    events = stream_events(llama_server, "/v1/chat/completions", {**chat, "stream": True})
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert content == answer["choices"][0]["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] == answer["choices"][0]["finish_reason"]
    assert "usage" not in events[-1]


def test_chat_uses_the_chat_template(llama_server: Server, tiny_llama: Path) -> None:
    tok, _ = ref.load(tiny_llama)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = [int(t) for t in tok(rendered, add_special_tokens=False)["input_ids"]]
    status, chat = llama_server.post_json("/v1/chat/completions", {
        "model": "tiny", "messages": messages, "max_tokens": 12, "temperature": 0})
    assert status == 200
    plain = complete(llama_server, ids, max_tokens=12)
    assert chat["choices"][0]["message"]["content"] == plain["choices"][0]["text"]
    assert chat["usage"]["prompt_tokens"] == len(ids)
    assert chat["object"] == "chat.completion" and chat["id"].startswith("chatcmpl-")


def test_same_seed_same_sample(llama_server: Server) -> None:
    doc = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 1.0, "top_p": 0.95,
           "top_k": 50}
    texts = [complete(llama_server, **doc, seed=s)["choices"][0]["text"]  # type: ignore[arg-type]
             for s in (7, 7, 8)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]
    with ThreadPoolExecutor(4) as pool:  # in a batch with others, the seed still decides
        again = list(pool.map(lambda s: complete(llama_server, **doc, seed=s)  # type: ignore[arg-type]
                              ["choices"][0]["text"], (7, 9, 7, 10)))
    assert again[0] == again[2] == texts[0]


def test_stop_strings_and_stop_token_ids(llama_server: Server) -> None:
    base = complete(llama_server, "Once upon a time", max_tokens=30, ignore_eos=True)
    text = base["choices"][0]["text"]
    ids = base["choices"][0]["token_ids"]
    stop = text[10:13]
    cut = complete(llama_server, "Once upon a time", max_tokens=30, ignore_eos=True, stop=[stop])
    # vLLM's stop_reason says which stop ended it (the string, the token id; None otherwise)
    assert (cut["choices"][0]["finish_reason"], cut["choices"][0]["stop_reason"]) == \
        ("stop", stop)
    assert cut["choices"][0]["text"] == text[:text.index(stop)]
    by_id = complete(llama_server, "Once upon a time", max_tokens=30, ignore_eos=True,
                     stop_token_ids=[ids[5]])
    # the stop token is returned and counted (as vLLM does), never part of the text
    assert by_id["choices"][0]["token_ids"] == ids[:ids.index(ids[5]) + 1]
    assert by_id["usage"]["completion_tokens"] == ids.index(ids[5]) + 1
    assert (by_id["choices"][0]["finish_reason"], by_id["choices"][0]["stop_reason"]) == \
        ("stop", ids[5])
    length = complete(llama_server, "Once upon a time", max_tokens=3, ignore_eos=True)
    assert (length["choices"][0]["finish_reason"], length["choices"][0]["stop_reason"]) == \
        ("length", None)
    assert length["choices"][0]["token_ids"] == ids[:3]
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True}
    said = llama_server.post_json("/v1/chat/completions", chat)[1]["choices"][0]
    chat_ids, chat_text = said["token_ids"], said["message"]["content"]
    assert len(chat_ids) == 30 and said["stop_reason"] is None
    for extra, reason in (({"stop": [chat_text[6:9]]}, chat_text[6:9]),
                          ({"stop_token_ids": [chat_ids[5]]}, chat_ids[5])):
        whole = llama_server.post_json("/v1/chat/completions", {**chat, **extra})[1]
        assert whole["choices"][0]["stop_reason"] == reason
        events = stream_events(llama_server, "/v1/chat/completions",
                               {**chat, **extra, "stream": True})
        assert events[-1]["choices"][0]["stop_reason"] == reason  # on the finishing chunk
        assert "stop_reason" not in events[-2]["choices"][0]


def test_logprobs(llama_server: Server) -> None:
    body = complete(llama_server, "Once upon a time", max_tokens=5, logprobs=3, ignore_eos=True)
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    for chosen, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert chosen <= 0 and len(top) == 3
        assert abs(max(top.values()) - chosen) < 1e-4  # greedy: the chosen one is the best
    # sampled: each top holds the drawn token too (up to logprobs + 1 entries, as OpenAI's and
    # vLLM's completions do), with its own logprob
    body = complete(llama_server, "Once upon a time", max_tokens=8, logprobs=1, ignore_eos=True,
                    temperature=2.0, seed=3)
    lp = body["choices"][0]["logprobs"]
    for token, chosen, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                  strict=True):
        assert 1 <= len(top) <= 2 and abs(top[token] - chosen) < 1e-6
    assert any(len(top) == 2 for top in lp["top_logprobs"])  # a draw that was not the best
    status, chat = llama_server.post_json("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0,
        "logprobs": True, "top_logprobs": 2, "ignore_eos": True})
    assert status == 200
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == 4 and all(len(c["top_logprobs"]) == 2 for c in content)


def test_logit_bias_steers_greedy_tokens(llama_server: Server) -> None:
    base = complete(llama_server, "Once upon a time", max_tokens=6, ignore_eos=True)
    favoured = next(t for t in range(5, 100) if t not in base["choices"][0]["token_ids"])
    body = complete(llama_server, "Once upon a time", max_tokens=6, ignore_eos=True,
                    logit_bias={str(favoured): 100})
    assert body["choices"][0]["token_ids"] == [favoured] * 6
    assert complete(llama_server, "Once upon a time", max_tokens=6, ignore_eos=True)[
        "choices"][0]["token_ids"] == base["choices"][0]["token_ids"]  # no bias left behind


def test_models_health_and_metrics(llama_server: Server) -> None:
    status, models = llama_server.get_json("/v1/models")
    assert status == 200
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert models["data"][0]["max_model_len"] == 512
    assert llama_server.request("GET", "/health")[0] == 200
    from kubemaas_runtime import __version__

    assert llama_server.get_json("/version") == (200, {"version": __version__})
    complete(llama_server, "Hello", max_tokens=4, ignore_eos=True)
    text = llama_server.metrics()
    values = {}
    for line in text.splitlines():
        m = re.match(r'^(vllm:[a-z0-9_]+)\{model_name="tiny"\} (\S+)$', line)
        if m:
            values[m.group(1)] = float(m.group(2))
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:kv_cache_usage_perc", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_count",
                 "vllm:inter_token_latency_seconds_count",
                 "vllm:e2e_request_latency_seconds_count"):
        assert name in values, name
    assert values["vllm:generation_tokens_total"] >= 4
    assert values["vllm:time_to_first_token_seconds_count"] >= 1
    assert re.search(r'vllm:cache_config_info\{model_name="tiny",block_size="16",'
                     r'num_gpu_blocks="\d+"\} 1', text)
    assert re.search(r'vllm:request_success_total\{model_name="tiny",finished_reason="length"\} '
                     r'[1-9]', text)
