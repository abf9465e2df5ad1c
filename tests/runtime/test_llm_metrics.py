"""vLLM's per-request histograms, served: each finished request's queue, prefill, decode and
inference times (which add up to its end-to-end latency), its mean time per output token, its
prompt and output lengths, its longest choice, where its prompt's KV came from, its max_tokens
and n, and the engine's tokens per step, which add up to the tokens it read; the periodic
stats records (--log-stats-interval-s), whose throughputs add up to the tokens read and
generated."""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Server, start_llm_server


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    server = start_llm_server(tiny_llama, "--log-level", "info", "--log-stats-interval-s", "0.25")
    yield server
    assert server.stop() == 0


def series(text: str, name: str) -> dict[str, float]:
    """A histogram's series: its buckets by bound, its sum and count."""
    out = {}
    for m in re.finditer(rf'^{re.escape(name)}_(bucket|sum|count)\{{model_name="tiny"'
                         rf'(?:,le="([^"]+)")?\}} (\S+)$', text, re.MULTILINE):
        out[m.group(2) if m.group(1) == "bucket" else m.group(1)] = float(m.group(3))
    return out


def test_a_requests_phases_and_sizes(server: Server) -> None:
    prompts = ["the cat", "a bird sings", "rain falls on the hill"]  # < 16 tokens: no cached block
    usages = []
    for i, prompt in enumerate(prompts):
        status, body = server.post_json("/v1/completions", {
            "prompt": prompt, "max_tokens": 3 + 3 * i, "ignore_eos": True, "temperature": 0})
        assert status == 200, body
        usages.append(body["usage"])
    status, body = server.post_json("/v1/completions", {
        "prompt": "two of them", "max_tokens": 4, "ignore_eos": True, "n": 2, "seed": 1})
    assert status == 200, body
    text = server.metrics()
    prompt_tokens = series(text, "vllm:request_prompt_tokens")
    assert prompt_tokens["count"] == 4
    assert prompt_tokens["sum"] == sum(u["prompt_tokens"] for u in usages) + \
        body["usage"]["prompt_tokens"]
    assert series(text, "vllm:request_generation_tokens")["sum"] == 3 + 6 + 9 + 4
    max_tokens = series(text, "vllm:request_params_max_tokens")
    assert (max_tokens["2"], max_tokens["5"], max_tokens["10"]) == (0, 2, 4)  # 3, 6, 9, 4
    n = series(text, "vllm:request_params_n")
    assert (n["1"], n["2"], n["count"]) == (3, 4, 4)
    phases = {p: series(text, f"vllm:request_{p}_time_seconds")
              for p in ("queue", "inference", "prefill", "decode")}
    e2e = series(text, "vllm:e2e_request_latency_seconds")
    assert all(s["count"] == 4 for s in phases.values()) and e2e["count"] == 4
    assert all(s["sum"] >= 0 for s in phases.values())
    assert phases["prefill"]["sum"] + phases["decode"]["sum"] == \
        pytest.approx(phases["inference"]["sum"], abs=1e-6)
    assert phases["queue"]["sum"] + phases["inference"]["sum"] == \
        pytest.approx(e2e["sum"], abs=1e-6)
    # each request's mean time per output token after its first: its decode time over its
    # tokens less one (2 to 8 here)
    tpot = series(text, "vllm:request_time_per_output_token_seconds")
    assert tpot["count"] == 4
    assert phases["decode"]["sum"] / 8 <= tpot["sum"] <= phases["decode"]["sum"] / 2 + 1e-9
    status, one = server.post_json("/v1/completions", {"prompt": "the cat", "max_tokens": 1})
    assert status == 200, one
    after_one = series(server.metrics(), "vllm:request_time_per_output_token_seconds")
    # one token has no time per token: 0, as vLLM counts it
    assert (after_one["count"], after_one["sum"], after_one["0.01"]) == (
        5, tpot["sum"], tpot["0.01"] + 1)
    # every step's tokens: each sequence's prompt read once, then one token per decode step
    steps = series(text, "vllm:iteration_tokens_total")
    read = sum(u["prompt_tokens"] + u["completion_tokens"] - 1 for u in usages) + \
        2 * (body["usage"]["prompt_tokens"] + 4 - 1)
    assert steps["sum"] == read and steps["count"] >= 1 + 4 - 1
    assert steps["+Inf"] == steps["count"]


def counter(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf'^{re.escape(name)}\{{model_name="tiny"{labels}\}} (\S+)$', text,
                      re.MULTILINE)
    assert found, name
    return float(found.group(1))


def test_prompt_sources_and_the_longest_choice(server: Server) -> None:
    """Where a finished request's prompt tokens came from (computed, or the prefix cache:
    what its usage reports as cached), and the longest of its choices."""
    def snapshot() -> dict[str, float]:
        text = server.metrics()
        return {"cached": counter(text, "vllm:prompt_tokens_cached_total"),
                **{source: counter(text, "vllm:prompt_tokens_by_source_total",
                                   f',source="{source}"')
                   for source in ("local_compute", "local_cache_hit", "external_kv_transfer")},
                "computed": series(text, "vllm:request_prefill_kv_computed_tokens").get("sum", 0),
                "longest": series(text, "vllm:request_max_num_generation_tokens").get("sum", 0),
                "longest_count": series(text, "vllm:request_max_num_generation_tokens").get(
                    "count", 0)}

    before = snapshot()
    prompt = " ".join(["the quiet river runs past the old mill"] * 8)  # several blocks
    usages = []
    for _ in range(2):  # the second finds the first's blocks
        status, body = server.post_json("/v1/completions", {
            "prompt": prompt, "max_tokens": 2, "temperature": 0})
        assert status == 200, body
        usages.append(body["usage"])
    cached = usages[1]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0 and usages[0]["prompt_tokens_details"]["cached_tokens"] == 0
    prompts = sum(u["prompt_tokens"] for u in usages)
    # three sampled choices cut by a stop string at different lengths: the longest counts,
    # shown on a request whose first choice is not the longest
    longest = []
    for seed in range(20):
        status, body = server.post_json("/v1/completions", {
            "prompt": "the cat", "max_tokens": 12, "n": 3, "temperature": 1.0, "seed": seed,
            "stop": [" "], "return_token_ids": True})
        assert status == 200, body
        prompts += body["usage"]["prompt_tokens"]
        lengths = [len(c["token_ids"]) for c in body["choices"]]
        longest.append(max(lengths))
        if lengths[0] < longest[-1]:
            break
    assert lengths[0] < longest[-1], "no seed gave a first choice shorter than another"
    after = snapshot()
    grew = {k: after[k] - before[k] for k in after}
    assert grew["cached"] == grew["local_cache_hit"] == cached  # "the cat": under a block
    assert grew["local_compute"] == grew["computed"] == prompts - cached
    assert grew["external_kv_transfer"] == 0
    assert grew["longest_count"] == 2 + len(longest)
    assert grew["longest"] == sum(u["completion_tokens"] for u in usages) + sum(longest)


def stats_records(server: Server) -> list[dict[str, float]]:
    return [d for d in server.logs() if d.get("msg") == "engine stats"]


def settled(server: Server, before: int = 0, quiet_s: float = 1.0) -> int:
    """The number of stats records once the engine is idle: the last record after ``before``
    saw nothing running or waiting (or there is none), and no other came for ``quiet_s``."""
    deadline = time.monotonic() + 60
    while True:
        records = stats_records(server)
        if len(records) <= before or (records[-1]["running"] == 0 and
                                      records[-1]["waiting"] == 0):
            time.sleep(quiet_s)
            if len(stats_records(server)) == len(records):
                return len(records)
        assert time.monotonic() < deadline, records[before:]
        time.sleep(0.05)


def test_the_stats_records_add_up_to_the_tokens(server: Server) -> None:
    before = settled(server)  # after the earlier tests' requests
    usages = []
    for prompt, max_tokens in (("the cat", 40), ("rain falls on the hill", 60)):
        status, body = server.post_json("/v1/completions", {
            "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True})
        assert status == 200, body
        usages.append(body["usage"])
    after = settled(server, before)
    records = stats_records(server)[before:after]
    assert records, "no stats record while the engine worked"
    assert all(r["logger"] == "kubemaas.runtime.llm.stats" and r["level"] == "info"
               for r in records)
    # each interval's throughput times its length: the tokens read and sampled in it (rates
    # are rounded to 0.1 token/s); prompts under a block have no cached part
    read = sum(r["prompt_tokens_per_s"] * r["seconds"] for r in records)
    sampled = sum(r["generation_tokens_per_s"] * r["seconds"] for r in records)
    assert read == pytest.approx(sum(u["prompt_tokens"] for u in usages), abs=0.5)
    assert sampled == pytest.approx(sum(u["completion_tokens"] for u in usages), abs=0.5)
    # one request at a time: a record may still catch it between its arrival and its
    # admission (the engine publishes its queue when it takes the request in), never two
    assert all(0 <= r["kv_cache_usage_perc"] <= 100 and r["waiting"] <= 1 and
               r["preemptions"] == 0 for r in records), records
    assert records[-1]["running"] == 0  # the last saw the engine go idle; none came after it


def token_counters(server: Server) -> tuple[float, float, float]:
    text = server.metrics()
    return (counter(text, "vllm:prompt_tokens_total"),
            counter(text, "vllm:generation_tokens_total"),
            counter(text, "vllm:num_requests_running"))


def test_token_counters_advance_while_a_request_runs(server: Server) -> None:
    """vLLM counts a request's prompt once prefilled and its output tokens each step: a long
    generation shows on a rate() while it runs, a request the client leaves keeps what it
    generated, and a finished one is counted once."""
    prompt0, gen0, _ = token_counters(server)
    assert server.port is not None
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({
        "prompt": "the cat", "max_tokens": 480, "ignore_eos": True, "stream": True}),
        {"Content-Type": "application/json"})
    resp = conn.getresponse()
    read = 0
    while read < 10:
        read += resp.fp.readline().startswith(b"data: {")
    prompt1, gen1, running = token_counters(server)
    assert running == 1, "the generation ended before the scrape"
    assert prompt1 > prompt0 and gen1 - gen0 >= read  # (was 0 and 0 until its end)
    conn.close()  # the client goes away
    deadline = time.monotonic() + 30
    while (left := token_counters(server))[2] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left[2] == 0
    assert left[0] == prompt1 and gen1 <= left[1] < gen0 + 480  # kept (was never counted)
    status, body = server.post_json("/v1/completions", {
        "prompt": "rain falls", "max_tokens": 7, "ignore_eos": True})
    assert status == 200, body
    done = token_counters(server)
    assert (done[0] - left[0], done[1] - left[1]) == (body["usage"]["prompt_tokens"], 7)
