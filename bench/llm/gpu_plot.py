"""The GPU check's plot: output tokens/s and inter-token latency per concurrency, the runtime
with CUDA graphs and eagerly against the in-process limit, from bench/llm/gpu.py's gpu.json
files (every run given is drawn; the eager points of a ``--eager-too`` run too).

    .venv/bin/python bench/llm/gpu_plot.py bench/llm/gpu-runs/2026-12-04/run*.json

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
fig, (tput, itl) = plt.subplots(1, 2, figsize=(11, 4.2))
style = {"graphs": "o-", "eager": "s--", "limit": "k:"}
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
tput.legend(fontsize=7)
itl.legend(fontsize=6, ncol=2)
fig.suptitle("~1 B random Llama, bfloat16, one H200: kubemaas with CUDA graphs, eagerly, "
             "and the model's own batched forward", fontsize=10)
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=90)
'''


def series(name: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's curves: served (graphs, or eager before they existed), eager, the limit."""
    def curve(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"c": p["concurrency"], "tok_s": p["output_tok_s"], "itl_p50": p["itl_p50_ms"],
                 "itl_p99": p["itl_p99_ms"]} for p in points]
    graphed = "points_eager" in doc  # runs before CUDA graphs have no eager column
    out = [{"kind": "graphs" if graphed else "eager", "points": curve(doc["points"]),
            "label": f"{name}: served{' (CUDA graphs)' if graphed else ' (eager)'}"}]
    if doc.get("points_eager"):
        out.append({"kind": "eager", "points": curve(doc["points_eager"]),
                    "label": f"{name}: served (eager)"})
    out.append({"kind": "limit", "label": f"{name}: in-process limit", "points": [
        {"c": b["batch"], "tok_s": b["decode_tok_s"]} for b in doc["limit"]["batches"]]})
    return out


def main() -> int:
    sys.path.insert(0, str(HERE))
    import envs

    paths = [Path(p) for p in sys.argv[1:]]
    if not paths:
        print(__doc__)
        return 2
    curves = [s for p in paths for s in series(p.stem.split("-")[0],
                                               json.loads(p.read_text()))]
    error = envs.draw(CODE, json.dumps(curves), OUT)
    if error:
        print(error, file=sys.stderr)
        return 1
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
