"""The GPU check's plot: output tokens/s and inter-token latency per concurrency, the runtime
with CUDA graphs and eagerly against the in-process limit, from bench/llm/gpu.py's gpu.json
files (every run given is drawn; the eager points of a ``--eager-too`` run too).

    cd bench/llm/gpu-runs/2026-12-04 && ../../../../.venv/bin/python ../../gpu_plot.py \\
        "run3-graphs-and-eager.json=run 3 (chunks alone, cuDNN)" \\
        "run7-c16-c64-twice-py-spy.json=run 7 (chunks together, cuDNN)" \\
        "run8-no-cudnn.json=run 8 (chunks together, no cuDNN)"

(a path, or PATH=LABEL; by default the label is the file name up to its first dash)

Writes docs/img/llm-gpu.png with matplotlib from the benchmark's plot virtualenv
(bench/llm/envs.py), as bench/llm/pooling_plot.py does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "docs" / "img" / "llm-gpu.png"

CODE = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
series = json.loads(sys.stdin.read())
fig, (tput, itl) = plt.subplots(1, 2, figsize=(12, 6.4))
style = {"graphs": "o-", "eager": "s--", "limit": ":"}
for s in series:
    c = [p["c"] for p in s["points"]]
    tput.plot(c, [p["tok_s"] for p in s["points"]], style[s["kind"]], label=s["label"])
    if s["kind"] != "limit":
        itl.plot(c, [p["itl_p50"] for p in s["points"]], style[s["kind"]],
                 label=s["label"] + " p50")
        itl.plot(c, [p["itl_p99"] for p in s["points"]], style[s["kind"]], alpha=0.4,
                 label=s["label"] + " p99")
for ax, title, unit in ((tput, "output tokens/s", "tokens/s"),
                        (itl, "inter-token latency", "ms")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrency (streams in flight)")
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
tput.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
itl.legend(fontsize=6, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))
fig.suptitle("~1 B random Llama, bfloat16, one H200: kubemaas served (CUDA graphs, eager) "
             "and the model's own batched forward, per run", fontsize=10)
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=90)
'''


def warm_limit(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The limit's points measured warm, the best per batch size: a batch measured twice in one
    run (its second run warm), or limit.py's own best of two runs ("first_decode_tok_s" marks
    those). Runs with one cold measurement per batch draw no limit (its decode steps ran 3-5x
    slow on the H200)."""
    batches = doc["limit"]["batches"]
    sizes = [b["batch"] for b in batches]
    best: dict[int, float] = {}
    for b in batches:
        if "first_decode_tok_s" in b or sizes.count(b["batch"]) > 1:
            best[b["batch"]] = max(best.get(b["batch"], 0.0), b["decode_tok_s"])
    return [{"c": c, "tok_s": t} for c, t in sorted(best.items())]


def series(name: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's curves: served (graphs, or eager before they existed), eager, the warm limit.
    Points are drawn in concurrency order; a point served twice shows both readings."""
    def curve(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"c": p["concurrency"], "tok_s": p["output_tok_s"], "itl_p50": p["itl_p50_ms"],
                 "itl_p99": p["itl_p99_ms"]}
                for p in sorted(points, key=lambda p: p["concurrency"])]
    graphed = "points_eager" in doc  # runs before CUDA graphs have no eager column
    out = [{"kind": "graphs" if graphed else "eager", "points": curve(doc["points"]),
            "label": f"{name}: served{' (CUDA graphs)' if graphed else ' (eager)'}"}]
    if doc.get("points_eager"):
        out.append({"kind": "eager", "points": curve(doc["points_eager"]),
                    "label": f"{name}: served (eager)"})
    limit = warm_limit(doc)
    if limit:
        out.append({"kind": "limit", "label": f"{name}: in-process limit (warm)",
                    "points": limit})
    return out


def main() -> int:
    sys.path.insert(0, str(HERE))
    import envs

    def curves(args: list[str]) -> list[dict[str, Any]]:
        runs = [arg.partition("=") for arg in args]  # PATH or PATH=LABEL
        return [s for path, _, label in runs
                for s in series(label or Path(path).stem.split("-")[0],
                                json.loads(Path(path).read_text()))]

    return envs.plot_main(__doc__, CODE, OUT, curves)


if __name__ == "__main__":
    sys.exit(main())
