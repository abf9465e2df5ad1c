"""What long prompts do to the streams already running: figures, table and plot of a
``long_prompts.py`` run.

    .venv/bin/python bench/llm/long_prompts_report.py bench/results/llm-long-latest.json \\
        [--update-doc]

A short stream's *gap* is the time between two of its token events. A gap *during a long
prefill* overlaps the span from a long prompt's send to its first token (its TTFT), when a
server is reading that prompt. ``--update-doc`` writes the table and
docs/img/llm-long-prompts.png into docs/llm-benchmark.md between its long-prompt markers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import results  # noqa: E402

PLOT = results.PLOT.with_name("llm-long-prompts.png")
BEGIN = "<!-- long-prompts:begin (bench/llm/long_prompts.py --update-doc writes this) -->"
END = "<!-- long-prompts:end -->"
Span = tuple[float, float]


def prefill_windows(requests: list[dict[str, Any]]) -> list[Span]:
    """When the server was reading a long prompt: from its send to its first token (to its end
    when it never gave one)."""
    out = []
    for r in requests:
        if r["kind"] == "long":
            stop = r["first"] if r["first"] is not None else r["end"]
            if stop is not None:
                out.append((r["send"], stop))
    return out


def short_gaps(requests: list[dict[str, Any]]) -> list[Span]:
    """Every gap between two token events of a short stream, as (start, end)."""
    return [(a, b) for r in requests if r["kind"] == "short"
            for a, b in zip(r["events"], r["events"][1:], strict=False)]


def overlaps(gap: Span, windows: list[Span]) -> bool:
    return any(gap[0] < w[1] and gap[1] > w[0] for w in windows)


def _ms(values: list[float], q: float) -> float | None:
    v = loadgen.percentile(values, q)
    return None if v is None else round(v * 1000, 2)


def summarize(point: dict[str, Any]) -> dict[str, Any]:
    """One point's figures: the short streams' rate and gaps (all, during a long prefill,
    outside one) and the long prompts' time to first token."""
    reqs = point["requests"]
    short = [r for r in reqs if r["kind"] == "short"]
    longs = [r for r in reqs if r["kind"] == "long"]
    windows = prefill_windows(reqs)
    gaps = short_gaps(reqs)
    during = [b - a for a, b in gaps if overlaps((a, b), windows)]
    outside = [b - a for a, b in gaps if not overlaps((a, b), windows)]
    every = during + outside
    tokens = sum(len(r["events"]) for r in short)
    span = (max((r["end"] or 0) for r in short) - min(r["send"] for r in short)) if short else 0
    ttft = [r["first"] - r["send"] for r in longs if r["first"] is not None]
    return {
        "short_requests": len(short),
        "short_errors": sorted({r["error"] for r in short if r["error"]})[:3],
        "short_tok_s": round(tokens / span, 2) if span > 0 else None,
        "itl_p50_ms": _ms(every, 50), "itl_p99_ms": _ms(every, 99), "itl_max_ms": _ms(every, 100),
        "gaps_during_prefill": len(during),
        "during_p50_ms": _ms(during, 50), "during_max_ms": _ms(during, 100),
        "outside_p99_ms": _ms(outside, 99),
        "long_requests": len(longs),
        "long_errors": sorted({r["error"] for r in longs if r["error"]})[:3],
        "long_ttft_p50_ms": _ms(ttft, 50), "long_ttft_max_ms": _ms(ttft, 100),
        "long_prompt_tokens": sorted({r["prompt_tokens"] for r in longs if r["prompt_tokens"]}),
    }


def _f(v: Any, nd: int = 1) -> str:
    return results.fmt(v, nd)


def render(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    lim = doc.get("limit", {})
    out = results.header(doc)
    out += [f"Model `{doc['model']}` ({doc['params'] / 1e6:.1f} M parameters, float32). "
            f"{s['concurrency']} short streams in a closed loop ({s['short_tokens']}-token "
            f"prompts, {s['max_tokens']} tokens each); in the mixed point a "
            f"{s['long_tokens']}-token prompt ({s['long_max_tokens']} tokens answered) arrives "
            f"at {', '.join(f'{t:g}' for t in s['long_at'])} s. In process (one torch thread, "
            f"the server's core): one {s['long_tokens']}-token prompt's prefill "
            f"{_f(lim.get('long_prefill_ms'))} ms, a batch-{s['concurrency']} decode step of "
            f"the short prompts {_f(lim.get('decode_step_ms'), 2)} ms.", "",
            "| server | short tok/s alone / mixed | gap p50 / p99 ms alone | gap p50 / p99 / max "
            "ms mixed | gaps during a long prefill: n, p50 / max ms | long prompt TTFT p50 / "
            "max ms | errors |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for srv in doc["servers"]:
        if "error" in srv:
            out.append(f"| {srv['server']} | failed: {srv['error'][:200]} | | | | | |")
            continue
        b, m = srv["alone"], srv["mixed"]
        errs = b["short_errors"] + m["short_errors"] + m["long_errors"]
        out.append(
            f"| {srv['server']} | {_f(b['short_tok_s'])} / {_f(m['short_tok_s'])} | "
            f"{_f(b['itl_p50_ms'])} / {_f(b['itl_p99_ms'])} | {_f(m['itl_p50_ms'])} / "
            f"{_f(m['itl_p99_ms'])} / {_f(m['itl_max_ms'])} | {m['gaps_during_prefill']}, "
            f"{_f(m['during_p50_ms'])} / {_f(m['during_max_ms'])} | "
            f"{_f(m['long_ttft_p50_ms'])} / {_f(m['long_ttft_max_ms'])} | "
            f"{'; '.join(errs) or 'none'} |")
    return "\n".join(out)


CODE = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
doc = json.loads(sys.stdin.read())
rows = [s for s in doc["servers"] if "gaps" in s]
fig, axes = plt.subplots(len(rows), 1, figsize=(11, 2.4 * len(rows) + 1), squeeze=False,
                         sharex=True)
for ax, s in zip(axes[:, 0], rows):
    for w0, w1 in s["windows"]:
        ax.axvspan(w0, w1, color="C1", alpha=0.25, lw=0)
    ax.plot([a for a, _ in s["gaps"]], [1000 * (b - a) for a, b in s["gaps"]], ".", ms=2,
            color="C0")
    ax.set_yscale("log")
    ax.set_ylabel("gap (ms)")
    ax.set_title(f"{s['server']}: short streams' inter-token gaps (shaded: a long prompt "
                 "from send to first token)", fontsize=9)
    ax.grid(True, alpha=0.3)
axes[-1][0].set_xlabel("seconds from the mixed point's start")
fig.suptitle(f"Long prompts beside running streams, {doc['stamp']} (server on 1 core)")
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=90)
'''


def plot(doc: dict[str, Any], out: Path = PLOT) -> str | None:
    """The short streams' gaps over the mixed point, a panel per server."""
    import envs

    data = {"stamp": doc["stamp"], "servers": [
        {"server": s["server"], "windows": prefill_windows(s["mixed_requests"]),
         "gaps": short_gaps(s["mixed_requests"])}
        for s in doc["servers"] if "mixed_requests" in s]}
    return envs.draw(CODE, json.dumps(data), out)


def update_doc(doc: dict[str, Any]) -> None:
    body = results.with_plot(render(doc), plot(doc), "Long prompts beside running streams", PLOT)
    results.write_section(BEGIN, END, body)


def main() -> int:
    return results.report_cli(__doc__.split("\n")[0], "a long_prompts.py run", render, update_doc)


if __name__ == "__main__":
    sys.exit(main())
