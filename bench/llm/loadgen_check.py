"""The benchmark's load generator checked against guidellm: one server of ours, the same closed
loop of c streams, the two clients' points alternated.

    .venv/bin/python bench/llm/loadgen_check.py --model tiny --concurrency 16 --requests 768 \
        --pairs 2

The LLM benchmark's figures come from loadgen.py (a small standard-library client, see
docs/llm-benchmark.md "Load generator"); this measures the same server with guidellm, a load
generator users already run (its ``concurrent`` profile: c streams, each sending its next
request when its last one ends), so that a gap between the two instruments shows. Both run
under ``taskset -c 1`` while the server has core 0. The prompts differ: loadgen.py sends the
benchmark's screened prompts (``--prompt-tokens`` tokens, greedy answers of ``--max-tokens``
tokens with no end-of-sequence), guidellm its synthetic text of that many tokens (the chat
template adds its own) with ``ignore_eos``. guidellm's inter-token latency is each request's
mean gap ((latency - TTFT) / (tokens - 1)), weighted by its tokens: loadgen.py's TPOT, not its
per-gap ITL. Traffic to 127.0.0.1 only; bounded in requests and time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import envs  # noqa: E402
import run  # noqa: E402
import run_args  # noqa: E402
import servers  # noqa: E402

procfs = run.procfs  # bench/runtime's /proc readings, as run.py imports them

FIGURES = ("output_tok_s", "req_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms",
           "itl_p50_ms", "itl_p99_ms")


def guidellm_point(python: Path, port: int, mdir: Path, a: argparse.Namespace,
                   out: Path) -> dict[str, Any]:
    """One guidellm run (``a.concurrency`` streams, ``a.requests`` requests) -> loadgen.py's
    figure names."""
    cmd = ["taskset", "-c", a.load_core, str(python.parent / "guidellm"), "run",
           "--backend", f"kind=openai_http,target=http://{run.HOST}:{port}",
           "--profile", f"kind=concurrent,streams={a.concurrency}",
           "--data", f"kind=synthetic_text,prompt_tokens={a.prompt_tokens},"
                     f"output_tokens={a.max_tokens}",
           "--tokenizer", f"kind=huggingface_auto,model={mdir}",
           "--constraint", f"kind=max_requests,count={a.requests}",
           "--constraint", f"kind=max_duration,seconds={a.point_seconds}",
           "--output", f"kind=json,path={out}", "--disable-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.point_seconds + 600,
                          cwd=out.parent, env=servers.base_env(1))
    if proc.returncode:
        raise RuntimeError(f"guidellm failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    return from_guidellm(json.loads(out.read_text()))


def from_guidellm(report: dict[str, Any]) -> dict[str, Any]:
    """guidellm's report (its first benchmark, successful requests) in loadgen.py's names."""
    bench = report["benchmarks"][0]["metrics"]

    def stat(name: str, key: str) -> float | None:
        # a rate's "mean" is its total over the benchmark's duration (tokens or requests / s)
        dist = bench[name]["successful"]
        value = dist[key] if key == "mean" else dist["percentiles"][key]
        return None if value is None else round(float(value), 3)

    totals = bench["request_totals"]
    return {"output_tok_s": stat("output_tokens_per_second", "mean"),
            "req_s": stat("requests_per_second", "mean"),
            "ttft_p50_ms": stat("time_to_first_token_ms", "p50"),
            "ttft_p99_ms": stat("time_to_first_token_ms", "p99"),
            "tpot_p50_ms": stat("inter_token_latency_ms", "p50"),
            "tpot_p99_ms": stat("inter_token_latency_ms", "p99"),
            "duration_s": round(float(report["benchmarks"][0]["duration"]), 3),
            # how many requests guidellm kept in flight (its closed loop asks for c)
            "in_flight_mean": round(float(bench["request_concurrency"]["successful"]["mean"]), 2),
            "ok": totals["successful"], "errors": totals["errored"],
            "incomplete": totals["incomplete"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", choices=sorted(run_args.SIZES))
    ap.add_argument("--requests", type=int, default=768, help="per point")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=16, help="streams (closed loop)")
    ap.add_argument("--prompt-tokens", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--point-seconds", type=float, default=120)
    ap.add_argument("--server-core", default="0")
    ap.add_argument("--load-core", default="1")
    ap.add_argument("--ready-timeout", type=float, default=600)
    ap.add_argument("--out", type=Path, help="JSON of every point")
    a = ap.parse_args(argv)
    logs = run.RESULTS / f"loadgen-check-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    logs.mkdir(parents=True, exist_ok=True)
    guidellm = envs.ensure_venv("guidellm")
    if guidellm.python is None:
        raise SystemExit(f"guidellm's virtualenv: {guidellm.error}")
    mdir = run.build_model(run_args.SIZES[a.model], logs / "build.log")
    prompts, _ = run.prepare_prompts(mdir, max(120, a.requests * a.pairs + 4), a.prompt_tokens,
                                     a.max_tokens, a.server_core, logs)
    rec, server, model_field = run.start_server(servers.BY_KEY["kubemaas"], mdir, a, logs, None)
    if server is None:
        raise SystemExit(f"the server did not start: {rec.get('error')}")
    points: list[dict[str, Any]] = []
    try:
        for pair in range(1, a.pairs + 1):
            order = ("loadgen", "guidellm") if pair % 2 else ("guidellm", "loadgen")
            for client in order:
                out = logs / f"{client}-{pair}.json"
                srv0 = procfs.tree_cpu_ticks(procfs.process_tree(server.proc.pid))
                if client == "loadgen":
                    p = run.run_loadgen(server.port, model_field, prompts, a.concurrency,
                                        a.requests, 0, (pair - 1) * a.requests, a.max_tokens,
                                        a.point_seconds, a.load_core, out)
                else:
                    p = guidellm_point(guidellm.python, server.port, mdir, a, out)
                ticks = procfs.tree_cpu_ticks(procfs.process_tree(server.proc.pid)) - srv0
                row = {"client": client, "pair": pair, **{k: p.get(k) for k in FIGURES},
                       "ok": p.get("ok"), "duration_s": p.get("duration_s"),
                       "in_flight_mean": p.get("in_flight_mean"),
                       # the server's CPU from the client's start to its end over the
                       # measured requests' span (no warm-up: the server idles while a client
                       # starts); near 100 % the server was busy, not necessarily full
                       "server_cpu_pct": round(100 * ticks / procfs.CLK_TCK / p["duration_s"], 1)}
                points.append(row)
                print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    finally:
        server.stop()
    if a.out:
        a.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(a).items()},
                                     "points": points}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
