"""Tables, the targets verdict, the plot and the doc update from one results file.

    .venv/bin/python bench/runtime/report.py bench/results/runtime-latest.json [--update-doc]

The plot is drawn by plot.py inside a small cached venv with matplotlib (venvs.TOOLS), so our
own environment needs no plotting stack.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BEGIN = "<!-- results:begin (written by bench/runtime/run.py --update-doc) -->"
END = "<!-- results:end -->"


def _fmt(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}"


def markdown_tables(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    meta = doc["meta"]
    for model, lim in doc["inprocess"].items():
        lines.append(f"#### {model}")
        lines.append("")
        if "latency_us" in lim:
            lat = lim["latency_us"]
            lines.append(f"In-process onnxruntime (the limit, core {meta['server_core']}): "
                         f"p50 {lat['p50'] / 1000:.3f} ms, p99 {lat['p99'] / 1000:.3f} ms per "
                         f"call at batch 1 ({lim['rows_per_s_at_batch1']:.0f} rows/s); "
                         f"{lim['batch_rows_per_s']:.0f} rows/s at batch {lim['batch']}.")
        else:
            lines.append(f"In-process onnxruntime: failed: {lim.get('error')}")
        lines.append("")
        lines.append("| server | cold start s | c | req/s | p50 ms | p99 ms | p99/p50 | "
                     "CPU % | CPU ms/req | peak RSS MB | other CPU % core 0/1 |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in doc["results"]:
            if r["model"] != model:
                continue
            if r["error"] and not r["points"]:
                lines.append(f"| {r['server']} | — | — | **failed**: "
                             f"{_escape(r['error'])[:300]} | | | | | | | |")
                continue
            cold = r["cold_start_s"]
            cold_s = (_fmt(sorted(cold)[len(cold) // 2]) if cold else "—")
            for i, p in enumerate(r["points"]):
                err = f" ({p['error_total']} errors)" if p["error_total"] else ""
                lines.append(
                    f"| {r['server'] if i == 0 else ''} | {cold_s if i == 0 else ''} | "
                    f"{p['concurrency']} | {p['rps']:.1f}{err} | {p['p50_ms']:.3f} | "
                    f"{p['p99_ms']:.3f} | {p['p99_ms'] / max(p['p50_ms'], 1e-9):.2f} | "
                    f"{p['server_cpu_pct']:.0f} | {_cpu_per_req(p)} | {p['peak_rss_mb']:.0f} | "
                    f"{p['core0_other_pct']:.0f}/{p.get('core1_other_pct', 0):.0f}"
                    f"{' (disturbed)' if p.get('disturbed') else ''} |")
            if r["error"]:
                lines.append(f"| | | | **stopped**: {_escape(r['error'])[:300]} | | | | | | | |")
        lines.append("")
    return "\n".join(lines)


def _cpu_per_req(p: dict[str, Any]) -> str:
    """Server CPU time per answered request: robust to other load, unlike latency."""
    if not p["rps"]:
        return "—"
    return f"{p['server_cpu_pct'] / 100 / p['rps'] * 1000:.3f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def targets_markdown(doc: dict[str, Any]) -> str:
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    for t in doc["targets"]:
        verdict = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {verdict} |")
    return "\n".join(lines) + "\n"


def plot(results: Path, png: Path) -> None:
    import venvs

    v = venvs.ensure_venv("plot", venvs.TOOLS["plot"])
    if v.python is None:
        print(f"plot skipped: {v.error}")
        return
    png.parent.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([str(v.python), str(HERE / "plot.py"), str(results), str(png)],
                         capture_output=True, text=True, timeout=300)
    print(out.stdout.strip() or out.stderr.strip()[-500:])


def update_doc(doc: dict[str, Any], path: Path) -> None:
    meta = doc["meta"]
    body = [
        BEGIN,
        "",
        "## The run's own report (written by `run.py --update-doc`)",
        "",
        f"Run `{meta['command']}` at {meta['started_utc']} (finished {meta['finished_utc']}); "
        f"{meta['cpu_count']} x {meta['cpu_model']}, kernel {meta['kernel']}, Python "
        f"{meta['python']}, onnxruntime {meta['onnxruntime']} everywhere "
        f"(intra_op_num_threads={meta['intra_op_threads']}, sequential). Servers pinned to core "
        f"{meta['server_core']}, {meta.get('load_tool', 'wrk')} to core {meta['load_core']}. "
        f"Load average (1/5/15 min) "
        f"at start {meta['loadavg_start']}, at end {meta['loadavg_end']}. Points: "
        f"{meta['warm_s']} s warm-up then {meta['measure_s']} s measured per concurrency.",
        "",
        "Busiest processes over 2 s at the start and end of the run (no server of ours runs then): "
        + ", ".join(meta.get("busy_start", [])) + "; end: "
        + ", ".join(meta.get("busy_end", [])) + ".",
        "",
        f"Our runtime: the working tree at commit {meta.get('git_commit', '?')}"
        + (f" with uncommitted changes in {', '.join(meta['runtime_uncommitted'])}"
           if meta.get("runtime_uncommitted") else "") + ".",
        "",
        "Peer versions: " + "; ".join(
            f"{impl}: " + ", ".join(f"{k} {v}" for k, v in sorted(vers.items()))
            for impl, vers in sorted(meta["peer_versions"].items())) + ".",
        "",
        "### Targets as the script computes them",
        "",
        targets_markdown(doc),
        "### Measurements of this run",
        "",
        "![req/s and p99 against concurrency](img/runtime-benchmark.png)",
        "",
        markdown_tables(doc),
        END,
    ]
    text = path.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + "\n".join(body) + tail
    else:
        text = text.rstrip() + "\n\n" + "\n".join(body) + "\n"
    path.write_text(text)


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--update-doc", action="store_true")
    ap.add_argument("--plot", action="store_true")
    args = ap.parse_args()
    doc = json.loads(args.results.read_text())
    print(markdown_tables(doc))
    print(targets_markdown(doc))
    repo = HERE.parent.parent
    if args.plot or args.update_doc:
        plot(args.results, repo / "docs" / "img" / "runtime-benchmark.png")
    if args.update_doc:
        update_doc(doc, repo / "docs" / "runtime-benchmark.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
