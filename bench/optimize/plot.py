"""Draw one run of bench_optimize.py (runs in the plot venv: bench/runtime/venvs.py TOOLS).

    python plot.py bench/results/optimize-latest.json docs/img/optimize.png

One bar group per (model, option): the optimized model's size and latency at batch 1 and 8 as a
fraction of the original's (log scale: below 1 is smaller or faster), the agreement written
beside it, a hatched group where the guard refused and the original serves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BARS = (("size", "tab:blue"), ("batch1", "tab:orange"), ("batch8", "tab:green"))


def ratios(rep: dict[str, Any]) -> dict[str, float]:
    size, lat = rep.get("sizeBytes") or {}, rep.get("latencyMs") or {}
    out = {}
    if size.get("original"):
        out["size"] = size["optimized"] / size["original"]
    lo, lq = lat.get("original") or {}, lat.get("optimized") or {}
    for key in lo:
        name = "batch1" if key == "batch1" else "batch8"  # the max batch (8 here)
        if lq.get(key):
            out[name] = lq[key] / lo[key]
    return out


def agreement(rep: dict[str, Any]) -> str:
    (errs,) = (rep.get("errors") or {"": {}}).values()
    if "top1Agreement" in errs:
        return f"top-1 {errs['top1Agreement'] * 100:.0f} %"
    if "tokenAgreement" in errs:
        return f"tokens {errs['tokenAgreement'] * 100:.0f} %"
    return ""


def main() -> None:
    doc = json.loads(Path(sys.argv[1]).read_text())
    rows = doc["results"]
    fig, ax = plt.subplots(figsize=(9.5, 0.42 * len(rows) + 1.6))
    height = 0.26
    for i, r in enumerate(rows):
        rep = r["report"]
        got = ratios(rep)
        refused = rep.get("serving") != "optimized"
        for j, (key, color) in enumerate(BARS):
            if key in got:
                ax.barh(i + (j - 1) * height, got[key], height, color=color, alpha=0.9,
                        hatch="//" if refused else None, edgecolor="black" if refused else None)
        ax.text(1.02, i, f"{agreement(rep)}{'  (original serves)' if refused else ''}",
                transform=ax.get_yaxis_transform(), va="center", fontsize=7)
    labels = [f"{r['model']}: " + " + ".join(f"{v}" for _, v in sorted(r["options"].items(),
                                                                          reverse=True))
              for r in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("optimized / original (log; < 1: smaller or faster)", fontsize=8)
    from matplotlib.patches import Patch

    names = {"size": "size", "batch1": "latency batch 1", "batch8": "latency batch 8"}
    handles = [Patch(color=color, label=names[key]) for key, color in BARS]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//",
                         label="guard refused: the original serves"))
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    start, end = doc.get("loadStart", [0])[0], doc.get("loadEnd", [0])[0]
    ax.set_title(f"spec.model.optimize, CPU, {doc.get('started', '')}: 1-min load average "
                 f"{start:.1f} at the start, {end:.1f} at the end (shared 2-core machine)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=72)
    from PIL import Image  # matplotlib depends on pillow: shrink to a 64-colour palette

    Image.open(sys.argv[2]).convert("RGB").quantize(colors=64).save(sys.argv[2], optimize=True)
    print(f"plot: {sys.argv[2]}")


if __name__ == "__main__":
    main()
