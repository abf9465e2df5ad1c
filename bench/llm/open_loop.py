"""Tables and plot of an open-loop LLM benchmark run (bench/llm/run.py --request-rate ...).

    .venv/bin/python bench/llm/open_loop.py bench/results/llm-latest.json [--update-doc]

In an open loop requests arrive at an offered rate (seeded Poisson, the same schedule for every
server), whether or not the server keeps up: a point is judged by the rate it sustained and
the latencies it gave, not by its tokens/s, which the offered rate bounds. Issue 12's targets
are stated for the closed loop, so no verdicts here. ``--update-doc`` writes the tables and
docs/img/llm-open-loop.png into docs/llm-benchmark.md between its open-loop markers.
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

PLOT = results.PLOT.with_name("llm-open-loop.png")
BEGIN = "<!-- open-loop:begin (bench/llm/run.py --request-rate ... --update-doc writes this) -->"
END = "<!-- open-loop:end -->"


def rates(doc: dict[str, Any]) -> dict[str, list[float]]:
    """The offered rates per model of a run ({} for a closed loop). A run written before rates
    were per model has one number in its settings, for every model."""
    out = {size: list(e["request_rates"]) for size, e in doc["models"].items()
           if e.get("request_rates")}
    legacy = doc.get("settings", {}).get("request_rate")
    if not out and isinstance(legacy, (int, float)) and legacy > 0:
        out = {size: [float(legacy)] for size in doc["models"]} or {"*": [float(legacy)]}
    return out


def is_open_loop(doc: dict[str, Any]) -> bool:
    return bool(rates(doc))


def scheduled_rate(p: dict[str, Any]) -> float | None:
    """The rate a point's requests were actually due at: its seeded Poisson schedule (run.py
    uses seed 0) over its own span. Few requests stray from the nominal rate (32 at seed 0
    span 0.79 of it), so a server is judged against this, not the nominal rate."""
    n, rate = p["requests"], p.get("request_rate")
    if not rate or n < 2:
        return None
    return (n - 1) / loadgen.arrival_times(n, rate, 0)[-1]


def render(doc: dict[str, Any]) -> str:
    out = results.header(doc)
    per_model = "; ".join(f"{size}: {', '.join(f'{r:g}' for r in rs)}"
                          for size, rs in rates(doc).items())
    out += [f"Open loop: requests arrive at the offered rate (requests per second; {per_model}), "
            "seeded Poisson arrivals, the same schedule for every server (in brackets the rate "
            "that schedule came to over the point's requests), at most c in "
            "flight (a request due while c are in flight is sent when one ends, and its TTFT "
            "counts from then, as vLLM's benchmark client counts it). A server that keeps up "
            "sustains the offered rate; one that does not falls behind and its points are "
            "bounded by c. Sustained: the requests answered over the time from the first send to "
            "the last answer. No target verdicts: issue 12 states its targets for the closed "
            "loop.", ""]
    for size, entry in doc["models"].items():
        out += _model_section(size, entry)
    return "\n".join(out)


def _model_section(size: str, entry: dict[str, Any]) -> list[str]:
    out = [f"### Model `{size}` ({entry['params'] / 1e6:.1f} M parameters, float32), "
           "open loop", "",
           "| server | c | offered req/s (as scheduled) | sustained req/s | output tok/s "
           "| TTFT p50 / p99 ms | ITL p50 / p99 ms | ITL p99 / p50 | ok/cut/sent "
           "| server CPU % | load 1-min |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in entry["servers"]:
        for p in s.get("points") or []:
            ratio = (p["itl_p99_ms"] / p["itl_p50_ms"]
                     if p.get("itl_p50_ms") and p.get("itl_p99_ms") else None)
            out.append(
                f"| {results.label(s)} | {p['concurrency']} | "
                f"{p.get('request_rate', 0):g} ({results.fmt(scheduled_rate(p), 1)}) | "
                f"{results.fmt(p.get('req_s'), 1)} | "
                f"{results.fmt(p.get('output_tok_s'))} | "
                f"{results.fmt(p.get('ttft_p50_ms'))} / {results.fmt(p.get('ttft_p99_ms'))} | "
                f"{results.fmt(p.get('itl_p50_ms'), 2)} / {results.fmt(p.get('itl_p99_ms'), 2)} | "
                f"{results.fmt(ratio, 2)} | {p['ok']}/{p.get('cut', 0)}/{p['requests']} | "
                f"{results.fmt(p.get('server_cpu_pct'), 0)} | {p['loadavg'][0][0]:.1f} |")
    return out + results.failed_lines(entry) + [""]


CODE = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
doc = json.loads(sys.stdin.read())
models = list(doc["models"])
panels = (("req_s", "sustained requests/s"), ("ttft_p99_ms", "TTFT p99 (ms)"),
          ("itl_p99_ms", "inter-token latency p99 (ms)"))
fig, axes = plt.subplots(len(panels), len(models), figsize=(6 * len(models), 11),
                         squeeze=False)
for j, size in enumerate(models):
    colors = {}
    for s in doc["models"][size]["servers"]:
        pts = [p for p in s.get("points") or [] if p.get("request_rate")]
        if not pts:
            continue
        color = colors.setdefault(s["server"], f"C{len(colors)}")
        rate = [p["request_rate"] for p in pts]
        for i, (key, _) in enumerate(panels):
            axes[i][j].plot(rate, [p.get(key) or 0 for p in pts], "o-", color=color,
                            label=s["label"])
    offered = sorted({(p["request_rate"], p["scheduled"]) for s in doc["models"][size]["servers"]
                      for p in s.get("points") or [] if p.get("scheduled")})
    axes[0][j].plot([0] + [r for r, _ in offered], [0] + [q for _, q in offered], "k:",
                    label="offered (as scheduled)")
    for i, (key, title) in enumerate(panels):
        ax = axes[i][j]
        ax.set_title(f"{size}: {title}")
        ax.set_xlabel("offered requests/s")
        ax.grid(True, alpha=0.3)
        if i:
            ax.set_yscale("log")
    axes[len(panels) - 1][j].legend(fontsize=8, loc="upper center",
                                    bbox_to_anchor=(0.5, -0.18), ncol=3)
fig.suptitle(f"LLM benchmark, open loop {doc['stamp']} (server on 1 core, load on the other)")
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=90)
'''


def plot(doc: dict[str, Any], out: Path = PLOT) -> str | None:
    """Sustained rate, TTFT p99 and ITL p99 against the offered rate, per model and server."""
    import envs

    data = json.dumps({**doc, "models": {size: {**e, "servers": [
        {**s, "label": results.label(s), "points": [
            {**p, "scheduled": scheduled_rate(p)} for p in s.get("points") or []]}
        for s in e["servers"]]} for size, e in doc["models"].items()}})
    return envs.draw(CODE, data, out)


def update_doc(doc: dict[str, Any]) -> None:
    body = results.with_plot(render(doc), plot(doc), "LLM benchmark, open loop", PLOT)
    results.write_section(BEGIN, END, body)


def main() -> int:
    return results.report_cli(__doc__.split("\n")[0], "an open-loop run", render, update_doc)


if __name__ == "__main__":
    sys.exit(main())
