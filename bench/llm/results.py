"""Tables, target verdicts and the plot of an LLM benchmark run (bench/results/llm-*.json).

    .venv/bin/python bench/llm/results.py bench/results/llm-latest.json [--update-doc]
    .venv/bin/python bench/llm/results.py RUN/results.json --sweep RUN1/results.json \\
        RUN2/results.json --update-doc

Several files are merged: the last run's limit and servers, plus servers only earlier runs have.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DOC = REPO / "docs" / "llm-benchmark.md"
PLOT = REPO / "docs" / "img" / "llm-benchmark.png"
BEGIN = "<!-- results:begin (bench/llm/run.py --update-doc writes this part) -->"
END = "<!-- results:end -->"


def fmt(v: Any, nd: int = 1) -> str:
    """A figure for a table: thousands separated, ``nd`` decimals; '-' for none."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def point_line(p: dict[str, Any]) -> str:
    return (f"{fmt(p.get('output_tok_s'))} tok/s  TTFT p50 {fmt(p.get('ttft_p50_ms'))} "
            f"p99 {fmt(p.get('ttft_p99_ms'))} ms  ITL p50 {fmt(p.get('itl_p50_ms'))} "
            f"p99 {fmt(p.get('itl_p99_ms'))} ms  ok {p['ok']} cut {p.get('cut', 0)} "
            f"of {p['requests']}  "
            f"load {p['loadavg'][0][0]:.1f}")


def limit_line(lim: dict[str, Any]) -> str:
    parts = [f"prefill {lim['prefill_ms']} ms"]
    parts += [f"b={b['batch']}: {b['decode_tok_s']} tok/s decode, {b['e2e_tok_s']} with prefill"
              for b in lim["batches"]]
    return "; ".join(parts)


def _point(entry: dict[str, Any], server: str, conc: int) -> dict[str, Any] | None:
    """The server's point at ``conc``; with repeated runs, the run of median throughput (a
    measured point, not a blend), with every run's tok/s in ``runs_tok_s``."""
    found = [dict(p) for s in entry["servers"] if s["server"] == server
             for p in s.get("points", []) if p["concurrency"] == conc]
    if len(found) <= 1:
        return found[0] if found else None
    found.sort(key=lambda p: p.get("output_tok_s") or 0)
    median = found[(len(found) - 1) // 2]
    median["runs_tok_s"] = [p.get("output_tok_s") or 0 for p in found]
    return median


def _tok_s(p: dict[str, Any]) -> str:
    """A point's tok/s, and the spread of its repeated runs when there are several."""
    runs = p.get("runs_tok_s") or []
    if len(runs) < 2:
        return fmt(p["output_tok_s"])
    return f"{fmt(p['output_tok_s'])} (median of {len(runs)}: {fmt(runs[0])}-{fmt(runs[-1])})"


def label(s: dict[str, Any]) -> str:
    return f"{s['server']} #{s['repeat']}" if "repeat" in s else str(s["server"])


def _limits(entry: dict[str, Any], doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(entry.get("limits") or {doc["stamp"]: entry["limit"]})


def _per_cpu(p: dict[str, Any]) -> str:
    """Output tokens per CPU-second of the server's tree: fair when others share the core."""
    if not p.get("output_tok_s") or not p.get("server_cpu_pct"):
        return "-"
    return fmt(100 * p["output_tok_s"] / p["server_cpu_pct"])


def _run_limit(entry: dict[str, Any], doc: dict[str, Any], server: str) -> dict[str, Any] | None:
    """The in-process limit measured in the same run as ``server``'s rows."""
    for s in entry["servers"]:
        if s["server"] == server and "points" in s:
            return _limits(entry, doc).get(s.get("run", doc["stamp"]))
    return None


def _pair_limit(entry: dict[str, Any], p: dict[str, Any]) -> dict[str, Any] | None:
    """The limit measured just before ``p``'s pair (--paired-limit), if there is one."""
    for lim in entry.get("paired_limits", []):
        if lim["concurrency"] == p["concurrency"] and lim["pair"] == p.get("pair"):
            return dict(lim)
    return None


def _pct_of_limit(entry: dict[str, Any], doc: dict[str, Any], s: dict[str, Any],
                  p: dict[str, Any]) -> str:
    lim = _pair_limit(entry, p) or limit_batch(entry, p["concurrency"],
                                                _limits(entry, doc).get(s.get("run", "")))
    if lim is None or not p.get("output_tok_s"):
        return "-"
    return f"{100 * p['output_tok_s'] / lim['decode_tok_s']:.0f} %"


def limit_batch(entry: dict[str, Any], batch: int,
                 limit: dict[str, Any] | None = None) -> dict[str, Any] | None:
    for b in (limit or entry.get("limit", {})).get("batches", []):
        if b["batch"] == batch:
            return dict(b)
    return None


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One document from several runs: the last run's limit and servers, plus the servers that
    only earlier runs measured (each server row keeps the run it comes from)."""
    base: dict[str, Any] = json.loads(json.dumps(docs[-1]))
    base["runs"] = [run_info(d) for d in docs]
    for size, entry in base["models"].items():
        entry["limits"] = {d["stamp"]: d["models"][size]["limit"] for d in docs
                           if size in d["models"]}
        for s in entry["servers"]:
            s.setdefault("run", base["stamp"])
        have = {s["server"] for s in entry["servers"] if "points" in s}
        for d in reversed(docs[:-1]):
            for s in d["models"].get(size, {}).get("servers", []):
                if s["server"] not in have and "points" in s:
                    entry["servers"].append({**s, "run": d["stamp"]})
                    have.add(s["server"])
        entry["servers"] = [s for s in entry["servers"] if "points" in s
                            or s["server"] not in have]
    return base


def run_info(doc: dict[str, Any]) -> dict[str, Any]:
    m = doc["machine"]
    return {"stamp": doc["stamp"], "git": doc["git"], "command": doc["command"],
            "loadavg_start": m["loadavg_start"], "loadavg_end": m.get("loadavg_end"),
            "busy_at_start": m["busy_at_start"], "cpus": m["cpus"], "cpu_model": m["cpu_model"]}


def render(doc: dict[str, Any]) -> str:
    import long_outputs  # sibling modules (bench/llm on the path, as for run.py)
    import open_loop

    if open_loop.is_open_loop(doc):  # judged by other measures: its own tables
        return open_loop.render(doc)
    if long_outputs.is_long_outputs(doc):  # the targets are for the 32-token answers
        return long_outputs.render(doc)
    out = header(doc)
    for size, entry in doc["models"].items():
        out += model_section(size, entry, doc)
    title = "### Targets (issue 12), from this run"
    if len(doc.get("runs", [])) > 1:
        title = ("### Targets (issue 12), computed across these runs (the rows compared may come "
                 "from runs under different load: indicative only)")
    out += [title, "", "| target | verdict | figures |", "|---|---|---|"]
    out += [f"| {t['target']} | {t['verdict']} | {t['figures']} |" for t in targets(doc)]
    return "\n".join(out)


def header(doc: dict[str, Any]) -> list[str]:
    """The runs (command, machine), and how to read the rows."""
    out = []
    for r in doc.get("runs", [run_info(doc)]):
        out += [f"Run `{r['stamp']}` (git {r['git']}): `{r['command']}`", "",
                f"Machine: {r['cpus']} CPUs ({r['cpu_model']}), load average at start "
                f"{r['loadavg_start']}, at end {r['loadavg_end']}; busy at start: "
                f"{', '.join(r['busy_at_start']) or 'nothing'}.", ""]
    if doc.get("settings", {}).get("paired"):
        out += ["Paired: every server was started once and kept up, and their points were "
                "alternated (at each concurrency, repeat after repeat, each server's point in "
                "turn, the order reversed every other repeat), the other servers stopped "
                "(SIGSTOP) while one was measured: a server's `#k` row holds its points of "
                "repeat k, and the points of one repeat ran seconds apart.", ""]
    if doc.get("settings", {}).get("paired_limit"):
        out += ["Paired limit: before each repeat's points at a concurrency, the in-process "
                "limit was measured again at that batch (every server stopped), and a paired "
                "point's \"% of limit\" is against that measurement.", ""]
    if "runs" in doc:
        out += ["Each server row is from the run named in its `run` column (the hhmm of its "
                "stamp); its \"% of limit\" is against the in-process limit of that run.", ""]
    return out


def model_section(size: str, entry: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    """One model: its in-process limits, then a row per server run and concurrency."""
    out = [f"### Model `{size}` ({entry['params'] / 1e6:.1f} M parameters, float32)", ""]
    for stamp, lim in _limits(entry, doc).items():
        out += [f"In-process limit, run `{stamp}` (one torch thread, server core): prefill "
                f"of one {lim['prompt_tokens']}-token prompt {lim['prefill_ms']} ms "
                f"(median of 5).", "",
                "| batch | decode tok/s | decode tok per CPU-s | tok/s incl. prefill | "
                "decode step ms | prefill ms |",
                "|---:|---:|---:|---:|---:|---:|"]
        out += [f"| {b['batch']} | {fmt(b['decode_tok_s'])} | "
                f"{fmt(b.get('decode_tok_per_cpu_s'))} | {fmt(b['e2e_tok_s'])} | "
                f"{b['step_ms']} | {b['prefill_ms']} |" for b in lim["batches"]]
        out.append("")
    if entry.get("paired_limits"):
        pairs = ", ".join(f"c={lim['concurrency']} #{lim['pair']} {fmt(lim['decode_tok_s'])}"
                          for lim in entry["paired_limits"])
        out += [f"Limit measured before each pair (--paired-limit), decode tok/s: {pairs}.", ""]
    out += ["| server | c | output tok/s | % of limit | tok per CPU-s | TTFT p50 / p99 ms | "
            "ITL p50 / p99 ms | tok/event | ITL text-only p50 / p99 ms | "
            "ok/cut/sent | answers = greedy | server CPU % | other on its core % | "
            "load 1-min | peak RSS MB | ready s | first answer s | run |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            "---:|---|"]
    out += [_server_row(entry, doc, s, p) for s in entry["servers"] for p in s.get("points") or []]
    return out + failed_lines(entry) + [""]


def failed_lines(entry: dict[str, Any]) -> list[str]:
    """The servers that could not be measured on a model, each with why."""
    failed = [s for s in entry["servers"] if "error" in s]
    if not failed:
        return []
    return ["", "Not measured on this model:", "",
            *(f"* **{s['server']}**: {s['error'][:600]}" for s in failed)]


def _server_row(entry: dict[str, Any], doc: dict[str, Any], s: dict[str, Any],
                p: dict[str, Any]) -> str:
    return (f"| {label(s)} | {p['concurrency']} | {fmt(p['output_tok_s'])} | "
            f"{_pct_of_limit(entry, doc, s, p)} | {_per_cpu(p)} | "
            f"{fmt(p['ttft_p50_ms'])} / {fmt(p['ttft_p99_ms'])} | "
            f"{fmt(p['itl_p50_ms'], 2)} / {fmt(p['itl_p99_ms'], 2)} | "
            f"{fmt(p.get('tokens_per_event'), 2)} | "
            f"{fmt(p.get('itl_text_p50_ms'), 2)} / {fmt(p.get('itl_text_p99_ms'), 2)} | "
            f"{p['ok']}/{p.get('cut', 0)}/{p['requests']} | "
            f"{p['answers_equal_inprocess_greedy']} | "
            f"{fmt(p['server_cpu_pct'], 0)} | {fmt(p['other_cpu_on_server_core_pct'], 0)}"
            f" | {p['loadavg'][0][0]:.1f} | {fmt(s.get('peak_rss_mb'), 0)} | "
            f"{fmt(s.get('ready_s'), 2)} | {fmt(s.get('first_answer_s'), 2)} | "
            f"{s.get('run', doc['stamp'])[9:13]} |")


Row = Callable[[str, str, str], None]
PEER_TARGET = "small model, c=16: ≥ 3x transformers serve and ≥ best other peer (output tok/s)"


def _is_peer(name: str) -> bool:
    """False for a variant of our own server (servers.py's ``peer``), however fast it ran."""
    import servers  # a sibling module (bench/llm on the path, as for run.py)

    srv = servers.BY_KEY.get(name)
    return srv is None or srv.peer


def _peer_target(small: dict[str, Any], ours: str, row: Row) -> None:
    us = _point(small, ours, 16)
    hf = _point(small, "hf-serve", 16)
    names = sorted(name for name in {s["server"] for s in small["servers"]}
                   if name != ours and _is_peer(name))
    peers = {name: _point(small, name, 16) for name in names}
    best = max(((k, p) for k, p in peers.items() if p and p.get("output_tok_s")),
               key=lambda kp: kp[1]["output_tok_s"], default=(None, None))
    if us is None or not us.get("output_tok_s"):
        peer_txt = ", ".join(f"{k} {fmt(p['output_tok_s'])}" for k, p in peers.items()
                             if p and p.get("output_tok_s"))
        row(PEER_TARGET, "**not measured** (our server not in this run)", peer_txt or "-")
        return
    u = us["output_tok_s"]
    parts, ok = [], True
    if hf and hf.get("output_tok_s"):
        ratio = u / hf["output_tok_s"]
        ok &= ratio >= 3
        parts.append(f"{_tok_s(us)} vs hf-serve {_tok_s(hf)} = {ratio:.2f}x")
    if best[0] and best[1]:
        ratio = u / best[1]["output_tok_s"]
        parts.append(f"best other peer {best[0]} {_tok_s(best[1])} = {ratio:.2f}x")
        paired = paired_ratios(small, ours, best[0], 16)
        if paired:  # points seconds apart: the drift between runs cancels out
            ratio = statistics.median(paired)
            parts.append(f"paired points (--paired), ours/{best[0]}: "
                         f"{', '.join(f'{r:.2f}' for r in paired)}; median {ratio:.2f}x, "
                         f"ours ahead in {sum(r > 1 for r in paired)} of {len(paired)} "
                         "(the verdict's measure)")
        ok &= ratio >= 1
    row(PEER_TARGET, ("**met**" if ok else "**not met**") if parts
        else "**not measured** (no peer in this run)", "; ".join(parts) or "-")


def paired_ratios(entry: dict[str, Any], ours: str, peer: str, conc: int) -> list[float]:
    """Our tok/s over the peer's for each pair of --paired points at ``conc`` (the two points
    of a pair ran one after the other, both servers up)."""
    tok: dict[tuple[str, Any, int], float] = {}
    for s in entry["servers"]:
        if s.get("paired") and s["server"] in (ours, peer):
            for p in s.get("points", []):
                if p["concurrency"] == conc and p.get("output_tok_s") and "pair" in p:
                    tok[(s["server"], s.get("run"), p["pair"])] = p["output_tok_s"]
    return [tok[(ours, run, pair)] / v for (server, run, pair), v in tok.items()
            if server == peer and (ours, run, pair) in tok]


def _limit_target(size: str, entry: dict[str, Any], doc: dict[str, Any], ours: str,
                  row: Row) -> None:
    target = f"{size}: c=16 ≥ 70 % of the in-process batched-decode limit"
    p = _point(entry, ours, 16)
    lim = limit_batch(entry, 16, _run_limit(entry, doc, ours))
    if not (p and p.get("output_tok_s") and lim):
        row(target, "**not measured**", "-")
        return
    r = p["output_tok_s"] / lim["decode_tok_s"]
    r2 = p["output_tok_s"] / lim["e2e_tok_s"]
    figures = (f"{_tok_s(p)} tok/s vs batch-16 decode {fmt(lim['decode_tok_s'])}"
               f" = {100 * r:.0f} % (vs batch-16 incl. prefill {fmt(lim['e2e_tok_s'])}: "
               f"{100 * r2:.0f} %)")
    paired = [q["output_tok_s"] / pl["decode_tok_s"] for s in entry["servers"]
              if s["server"] == ours and s.get("paired") for q in s.get("points", [])
              if q["concurrency"] == 16 and q.get("output_tok_s") and (pl := _pair_limit(entry, q))]
    if paired:  # each point beside a limit measured seconds before it: the verdict's measure
        r = statistics.median(paired)
        figures += (f"; paired with the limit (--paired-limit): "
                    f"{', '.join(f'{100 * x:.0f} %' for x in paired)}; median {100 * r:.0f} %")
    row(target, "**met**" if r >= 0.7 else "**not met**", figures)


def _itl_target(size: str, entry: dict[str, Any], ours: str, row: Row) -> None:
    loaded = [q for c in (4, 16, 32) if (q := _point(entry, ours, c))
              and q.get("itl_p50_ms") and q.get("itl_p99_ms")]
    if not loaded:
        row(f"{size}: ITL p99 ≤ 2x p50 under load", "**not measured**", "-")
        return
    ratios = [f"c={q['concurrency']} {q['itl_p99_ms'] / q['itl_p50_ms']:.2f}x" for q in loaded]
    ok = all(q["itl_p99_ms"] <= 2 * q["itl_p50_ms"] for q in loaded)
    row(f"{size}: ITL p99 ≤ 2x p50 under load (c ≥ 4)", "**met**" if ok else "**not met**",
        ", ".join(ratios))


def _ttft_target(small: dict[str, Any], doc: dict[str, Any], ours: str, row: Row) -> None:
    target = "small: TTFT at c=1 within 1.3x of in-process prefill"
    p1 = _point(small, ours, 1)
    if not (p1 and p1.get("ttft_p50_ms")):
        row(target, "**not measured**", "-")
        return
    prefill = (_run_limit(small, doc, ours) or small["limit"])["prefill_ms"]
    r = p1["ttft_p50_ms"] / prefill
    row(target, "**met**" if r <= 1.3 else "**not met**",
        f"TTFT p50 {fmt(p1['ttft_p50_ms'])} ms vs prefill {prefill} ms = {r:.2f}x")


def targets(doc: dict[str, Any]) -> list[dict[str, str]]:
    """Issue 12's benchmark targets, each with its verdict and the figures behind it."""
    rows: list[dict[str, str]] = []
    small = doc["models"].get("small")
    ours = "kubemaas"

    def row(target: str, verdict: str, figures: str) -> None:
        rows.append({"target": target, "verdict": verdict, "figures": figures})

    if small is None:
        return [{"target": "all", "verdict": "not run", "figures": "no small model in run"}]
    _peer_target(small, ours, row)
    for size, entry in doc["models"].items():
        _limit_target(size, entry, doc, ours, row)
        _itl_target(size, entry, ours, row)
    _ttft_target(small, doc, ours, row)
    return rows


def plot(doc: dict[str, Any], out: Path = PLOT) -> str | None:
    """Output tok/s and ITL p50 against concurrency per model (matplotlib from its own venv)."""
    sys.path.insert(0, str(HERE))
    import envs

    data = json.dumps({**doc, "models": {size: {**e, "servers": [
        {**s, "label": label(s)} for s in e["servers"]]} for size, e in doc["models"].items()}})
    code = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
doc = json.loads(sys.stdin.read())
models = list(doc["models"])
fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
for j, size in enumerate(models):
    e = doc["models"][size]
    colors = {}  # one colour per server; repeated runs differ by marker
    for s in e["servers"]:
        pts = s.get("points") or []
        if not pts:
            continue
        c = [p["concurrency"] for p in pts]
        name = s["label"]
        color = colors.setdefault(s["server"], f"C{len(colors)}")
        style = "os^dv"[(s.get("repeat", 1) - 1) % 5] + "-"
        for ax, key in ((axes[0][j], "output_tok_s"), (axes[1][j], "itl_p50_ms")):
            ax.plot(c, [p[key] or 0 for p in pts], style, color=color, label=name)
    lim = e["limit"]["batches"]
    axes[0][j].plot([b["batch"] for b in lim], [b["decode_tok_s"] for b in lim], "k--",
                    label="in-process decode")
    axes[0][j].plot([b["batch"] for b in lim], [b["e2e_tok_s"] for b in lim], "k:",
                    label="in-process incl. prefill")
    axes[0][j].set_title(f"{size} ({e['params'] / 1e6:.1f} M): output tokens/s")
    axes[1][j].set_title(f"{size}: inter-token latency p50 (ms)")
    for ax in (axes[0][j], axes[1][j]):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[1][j].set_yscale("log")
fig.suptitle(f"LLM benchmark {doc['stamp']} (server on 1 core, load on the other)")
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=90)
'''
    return envs.draw(code, data, out)


def update_doc(doc: dict[str, Any], sweep: dict[str, Any] | None = None) -> None:
    import long_outputs
    import open_loop

    if open_loop.is_open_loop(doc):
        open_loop.update_doc(doc)
        return
    if long_outputs.is_long_outputs(doc):
        long_outputs.update_doc(doc)
        return
    err = plot(doc)
    body = render(doc)
    if err:
        body += f"\n\n(plot not drawn: {err})"
    else:
        body += f"\n\n![LLM benchmark](img/{PLOT.name})"
    if sweep is not None:
        sweep_plot = PLOT.with_name(PLOT.stem + "-sweep.png")
        err = plot(sweep, sweep_plot)
        body += ("\n\n## Full concurrency sweeps (1, 4, 16, 32)\n\n"
                 + render(sweep).replace("### ", "#### "))
        body += (f"\n\n(plot not drawn: {err})" if err
                 else f"\n\n![LLM benchmark, sweeps](img/{sweep_plot.name})")
    write_section(BEGIN, END, body)


def with_plot(body: str, err: str | None, alt: str, plot_path: Path) -> str:
    """``body`` followed by its plot's image link, or by why the plot was not drawn."""
    return body + (f"\n\n(plot not drawn: {err})" if err
                   else f"\n\n![{alt}](img/{plot_path.name})")


def report_cli(description: str, what: str, render_doc: Callable[[dict[str, Any]], str],
               update: Callable[[dict[str, Any]], None]) -> int:
    """The command line of a report module: print a run's tables, ``--update-doc`` writes
    them (and the plot) into the doc."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("file", type=Path, help=f"{what}'s results.json")
    ap.add_argument("--update-doc", action="store_true")
    a = ap.parse_args()
    doc = json.loads(a.file.read_text())
    print(render_doc(doc))
    if a.update_doc:
        update(doc)
    return 0


def write_section(begin: str, end: str, body: str) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` of the doc with ``body``."""
    text = DOC.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{DOC} lacks the markers {begin!r} and {end!r}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(f"{head}{begin}\n{body}\n{end}{tail}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="runs merged into the main tables")
    ap.add_argument("--sweep", nargs="*", type=Path, default=[],
                    help="runs merged into a second section (full concurrency sweeps)")
    ap.add_argument("--update-doc", action="store_true")
    a = ap.parse_args()
    doc = merge([json.loads(f.read_text()) for f in a.files])
    sweep = merge([json.loads(f.read_text()) for f in a.sweep]) if a.sweep else None
    print(render(doc))
    if sweep:
        print(render(sweep))
    if a.update_doc:
        update_doc(doc, sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
