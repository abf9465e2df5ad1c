"""Tables and plot of a long-answer LLM benchmark run (bench/llm/run.py --max-tokens 512 ...).

    .venv/bin/python bench/llm/long_outputs.py RUN/results.json [RUN2/results.json] [--update-doc]

The main tables ask every server for 32-token answers, so a step's attention reads at most ~70
positions per sequence. Over a long answer the context grows and every step reads more of the
KV cache: this run's tables are the main tables' columns at that answer length, and a second
table follows each stream's gap between two tokens by the answer's position (median per
``limit.POSITION_BUCKET`` tokens), beside the in-process decode step at the same positions.
Issue 12's targets are stated for the main tables, so no verdicts here. ``--update-doc``
writes the tables and docs/img/llm-long-outputs.png into docs/llm-benchmark.md between its
long-outputs markers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import limit  # noqa: E402
import results  # noqa: E402
import run_args  # noqa: E402

PLOT = results.PLOT.with_name("llm-long-outputs.png")
BEGIN = "<!-- long-outputs:begin (bench/llm/run.py --max-tokens N --update-doc writes this) -->"
END = "<!-- long-outputs:end -->"


def is_long_outputs(doc: dict[str, Any]) -> bool:
    default = run_args.DEFAULT_MAX_TOKENS
    return int(doc.get("settings", {}).get("max_tokens", default)) > default


def gaps_by_position(point: dict[str, Any], bucket: int = limit.POSITION_BUCKET
                     ) -> list[float | None]:
    """Median gap (ms) before the answer's tokens ``k*bucket+1 .. (k+1)*bucket`` over every
    stream of a point (its timelines: send, then each token event, in ms)."""
    per: dict[int, list[float]] = {}
    for times in point.get("timelines", {}).values():
        events = times[1:]
        for k, (a, b) in enumerate(itertools.pairwise(events)):
            per.setdefault(k // bucket, []).append(b - a)
    if not per:
        return []
    return [round(statistics.median(per[i]), 2) if i in per else None
            for i in range(max(per) + 1)]


def position_rows(entry: dict[str, Any]) -> tuple[list[int], list[tuple[str, list[Any]]]]:
    """The bucket starts and, per concurrency, the limit's step and every server's gap medians
    (ms) by position: (starts, [(row label, figures)])."""
    rows: list[tuple[str, list[Any]]] = []
    for conc in sorted({p["concurrency"] for s in entry["servers"] for p in s.get("points") or []}):
        steps = (results.limit_batch(entry, conc) or {}).get("step_ms_by_position")
        if steps:
            rows.append((f"in-process decode step, batch {conc}", steps))
        for s in entry["servers"]:
            for p in s.get("points") or []:
                if p["concurrency"] == conc:
                    rows.append((f"{results.label(s)}, c={conc}", gaps_by_position(p)))
    width = max((len(r) for _, r in rows), default=0)
    starts = [1 + i * limit.POSITION_BUCKET for i in range(width)]
    return starts, rows


def _position_table(entry: dict[str, Any]) -> list[str]:
    starts, rows = position_rows(entry)
    if not starts:
        return []
    size = limit.POSITION_BUCKET
    out = [f"Gap between two tokens by the answer's position (ms; median over every stream's "
           f"gaps in each span of {size} tokens; the in-process row is its decode step's mean "
           "over those steps):", "",
           "| | " + " | ".join(f"{s}-{s + size - 1}" for s in starts) + " |",
           "|---|" + "---:|" * len(starts)]
    for name, figs in rows:
        cells = [results.fmt(f, 2) if f is not None else "" for f in figs]
        out.append(f"| {name} | " + " | ".join(cells + [""] * (len(starts) - len(cells))) + " |")
    return [*out, ""]


def render(doc: dict[str, Any]) -> str:
    max_tokens = doc["settings"]["max_tokens"]
    out = results.header(doc)
    out += [f"Long answers: every request asks for {max_tokens} tokens (prompts of "
            f"{doc['settings']['prompt_tokens']}; the in-process limit decodes as many steps); "
            "prompts screened so that every greedy answer runs to that length.", ""]
    for size, entry in doc["models"].items():
        out += results.model_section(size, entry, doc) + _position_table(entry)
    return "\n".join(out)


def plot(doc: dict[str, Any], out: Path = PLOT) -> str | None:
    """Per model: the gap by answer position of every server at each concurrency, and the
    in-process step (dashed)."""
    import envs

    data = json.dumps({size: position_rows(e) for size, e in doc["models"].items()})
    code = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
models = json.loads(sys.stdin.read())
fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False)
for ax, (size, (starts, rows)) in zip(axes[0], models.items()):
    for name, figs in rows:
        xs = [s for s, f in zip(starts, figs) if f is not None]
        ys = [f for f in figs if f is not None]
        ax.plot(xs, ys, "k--" if name.startswith("in-process") else "o-", label=name)
    ax.set_title(f"{size}: gap between tokens by answer position")
    ax.set_xlabel("answer token (start of span)")
    ax.set_ylabel("ms (median of the span)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=90)
'''
    return envs.draw(code, data, out)


def combine(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One document from runs of different models: each model from the last run that has it,
    its rows and limit marked with that run's stamp."""
    if len(docs) == 1:
        return docs[0]
    base: dict[str, Any] = json.loads(json.dumps(docs[-1]))
    base["runs"] = [results.run_info(d) for d in docs]
    base["models"] = {}
    for d in docs:
        for size, entry in json.loads(json.dumps(d["models"])).items():
            entry["limits"] = {d["stamp"]: entry["limit"]}
            entry["servers"] = [{**srv, "run": d["stamp"]} for srv in entry["servers"]]
            base["models"][size] = entry
    return base


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", type=Path,
                    help="long-answer runs' results.json (each model from the last that has it)")
    ap.add_argument("--update-doc", action="store_true")
    a = ap.parse_args()
    doc = combine([json.loads(f.read_text()) for f in a.files])
    print(render(doc))
    if a.update_doc:
        update_doc(doc)
    return 0


def update_doc(doc: dict[str, Any]) -> None:
    results.write_section(BEGIN, END, results.with_plot(
        render(doc), plot(doc), "LLM benchmark, long answers", PLOT))


if __name__ == "__main__":
    sys.exit(main())
