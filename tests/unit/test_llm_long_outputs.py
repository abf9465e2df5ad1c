"""The long-answer benchmark's reading (bench/llm/long_outputs.py): a run asking for more than the
main tables' 32 tokens gets tables of its own, with every stream's gap between tokens by the
answer's position beside the in-process decode step at the same positions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "llm"))

import limit
import long_outputs
import results


def test_the_in_process_step_is_averaged_by_answer_position() -> None:
    # prefill ends at 0; steps of 1 ms for two positions, then 3 ms for two
    ends = [0.0, 0.001, 0.002, 0.005, 0.008]
    assert limit.step_ms_by_position(ends, bucket=2) == {
        "position_bucket": 2, "step_ms_by_position": [1.0, 3.0]}
    assert limit.step_ms_by_position([0.0]) == {}  # no decode step: nothing by position


def test_gaps_are_grouped_by_the_position_of_the_token_they_precede() -> None:
    bucket = limit.POSITION_BUCKET
    # two streams: send, then a token every 10 ms for one bucket, every 30 ms after it
    def timeline(send: float) -> list[float]:
        t, out = send + 100.0, [send, send + 100.0]
        for k in range(1, 2 * bucket):
            t += 10.0 if k <= bucket else 30.0
            out.append(t)
        return out

    point = {"timelines": {"0": timeline(0.0), "1": timeline(5.0)}}
    assert long_outputs.gaps_by_position(point) == [10.0, 30.0]
    assert long_outputs.gaps_by_position({"timelines": {}}) == []
    assert long_outputs.gaps_by_position({"timelines": {"0": [0.0, 100.0]}}) == []


def _doc(max_tokens: int) -> dict[str, Any]:
    point = {"concurrency": 16, "output_tok_s": 120.0, "ttft_p50_ms": 50.0, "ttft_p99_ms": 60.0,
             "itl_p50_ms": 12.0, "itl_p99_ms": 20.0, "ok": 16, "cut": 0, "requests": 16,
             "answers_equal_inprocess_greedy": "16/16", "server_cpu_pct": 100.0,
             "other_cpu_on_server_core_pct": 0.0, "loadavg": [[1.0, 1.0, 1.0]],
             "timelines": {"0": [0.0, 100.0, 110.0, 122.0]}}
    lim = {"prompt_tokens": 40, "prefill_ms": 100.0, "batches": [
        {"batch": 16, "decode_tok_s": 150.0, "e2e_tok_s": 140.0, "step_ms": 9.0,
         "prefill_ms": 50.0, "position_bucket": limit.POSITION_BUCKET,
         "step_ms_by_position": [8.0, 10.0]}]}
    return {"stamp": "20261205T000000Z", "git": "abc", "command": "run.py", "machine": {
        "cpus": 2, "cpu_model": "cpu", "loadavg_start": [1, 1, 1], "loadavg_end": [1, 1, 1],
        "busy_at_start": []}, "settings": {"max_tokens": max_tokens, "prompt_tokens": 40},
        "models": {"small": {"params": 190e6, "limit": lim, "servers": [
            {"server": "kubemaas", "points": [point]}]}}}


def test_a_long_answer_run_has_tables_of_its_own() -> None:
    doc = _doc(512)
    assert long_outputs.is_long_outputs(doc) and not long_outputs.is_long_outputs(_doc(32))
    table = results.render(doc)
    assert "every request asks for 512 tokens" in table
    assert "| kubemaas | 16 | 120.0 |" in table
    assert "Targets" not in table  # the targets are stated for the 32-token answers
    span = f"{limit.POSITION_BUCKET + 1}-{2 * limit.POSITION_BUCKET}"
    assert f"| | 1-{limit.POSITION_BUCKET} | {span} |" in table
    assert "| in-process decode step, batch 16 | 8.00 | 10.00 |" in table
    # the server's one stream: gaps of 10 and 12 ms in the first span, none in the second
    assert "| kubemaas, c=16 | 11.00 |  |" in table
    assert "Targets" in results.render(_doc(32))


def test_runs_of_different_models_combine_with_their_own_stamps() -> None:
    tiny = _doc(512)
    tiny["models"] = {"tiny": {**tiny["models"]["small"], "params": 0.9e6}}
    small = {**_doc(512), "stamp": "20261205T010000Z"}
    doc = long_outputs.combine([tiny, small])
    assert list(doc["models"]) == ["tiny", "small"]
    assert [r["stamp"] for r in doc["runs"]] == ["20261205T000000Z", "20261205T010000Z"]
    table = long_outputs.render(doc)
    assert "In-process limit, run `20261205T000000Z`" in table
    assert "In-process limit, run `20261205T010000Z`" in table
    # each model's rows name their run and count against that run's limit (120 of 150)
    assert table.count("| kubemaas | 16 | 120.0 | 80 % |") == 2
