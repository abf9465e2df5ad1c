"""The pooling benchmarks' plot: served against in-process throughput per concurrency, one panel
per run of bench/llm/embed.py or bench/llm/rerank.py (their ``--json`` files).

    .venv/bin/python bench/llm/pooling_plot.py out/embed-tiny.json out/rerank-minilm.json ...

Writes docs/img/llm-pooling.png with matplotlib from the benchmark's plot virtualenv
(bench/llm/envs.py), as bench/llm/results.py draws the LLM benchmark's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "docs" / "img" / "llm-pooling.png"

CODE = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
runs = json.loads(sys.stdin.read())
fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 4), squeeze=False)
for ax, run in zip(axes[0], runs):
    c = [p["concurrency"] for p in run["points"]]
    ax.plot(c, [p["served"] for p in run["points"]], "o-", label="kubemaas served")
    ax.plot(c, [p["limit"] for p in run["points"]], "k--", label="in-process forward")
    ax.set_title(run["title"], fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel(run["unit"])
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle("Pooling models: served on 1 core against the model's own batched forward")
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=90)
'''


def main() -> int:
    sys.path.insert(0, str(HERE))
    import envs

    return envs.plot_main(__doc__, CODE, OUT,
                          lambda paths: [json.loads(Path(p).read_text()) for p in paths])


if __name__ == "__main__":
    sys.exit(main())
