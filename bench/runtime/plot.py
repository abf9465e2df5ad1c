"""Draw req/s and p99 against concurrency, one column per model (runs in the plot venv).

    python plot.py bench/results/runtime-latest.json docs/img/runtime-benchmark.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STYLE = {  # ours solid, peers dashed
    "kubemaas": ("tab:blue", "-", "o"),
    "kubemaas-batch": ("tab:cyan", "-", "s"),
    "kubemaas-batch-bin": ("navy", "-", "^"),
    "kserve": ("tab:orange", "--", "o"),
    "mlserver": ("tab:green", "--", "o"),
    "mlserver-batch": ("tab:olive", "--", "s"),
    "pytriton": ("tab:red", "--", "o"),
    "pytriton-batch": ("tab:purple", "--", "s"),
}


def main() -> None:
    doc = json.loads(Path(sys.argv[1]).read_text())
    models = list(doc["inprocess"])
    fig, axes = plt.subplots(3, len(models), figsize=(5.2 * len(models), 9.0), squeeze=False)
    for col, model in enumerate(models):
        top, bottom, cpu = axes[0][col], axes[1][col], axes[2][col]
        for r in doc["results"]:
            pts = [p for p in r["points"] if r["model"] == model and not p["error_total"]
                   and p["requests"]]
            if not pts:
                continue
            color, ls, marker = STYLE.get(r["server"], ("grey", ":", "x"))
            cs = [p["concurrency"] for p in pts]
            top.plot(cs, [p["rps"] for p in pts], ls, color=color, marker=marker, ms=4,
                     label=r["server"])
            bottom.plot(cs, [p["p99_ms"] for p in pts], ls, color=color, marker=marker, ms=4)
            cpu.plot(cs, [10 * p["server_cpu_pct"] / p["rps"] for p in pts], ls, color=color,
                     marker=marker, ms=4)
        lim = doc["inprocess"].get(model, {})
        limit = (f" (in-process: {lim['rows_per_s_at_batch1']:.0f}/s at batch 1, "
                 f"{lim['batch_rows_per_s']:.0f} rows/s at batch {lim['batch']})"
                 if "rows_per_s_at_batch1" in lim else "")
        for ax in (top, bottom, cpu):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency (connections)")
            ax.grid(True, alpha=0.3)
        top.set_yscale("log")
        bottom.set_yscale("log")
        cpu.set_yscale("log")
        cpu.set_title(f"{model}: server CPU ms per request (robust to other load)", fontsize=8)
        top.set_title(f"{model}: requests/s{limit}", fontsize=8)
        bottom.set_title(f"{model}: p99 latency (ms)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="best")
    meta = doc["meta"]
    tool = meta.get("load_tool", "wrk")
    fig.suptitle(f"runtime benchmark {meta['started_utc']}: server on core "
                 f"{meta['server_core']}, {tool} on core {meta['load_core']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=72)
    from PIL import Image  # matplotlib depends on pillow: shrink to a 64-colour palette

    Image.open(sys.argv[2]).convert("RGB").quantize(colors=64).save(sys.argv[2], optimize=True)
    print(f"plot: {sys.argv[2]}")


if __name__ == "__main__":
    main()
