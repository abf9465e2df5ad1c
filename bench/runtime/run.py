"""Runtime benchmark: our runtime against KServe, MLServer and PyTriton, and the in-process limit.

    .venv/bin/python bench/runtime/run.py            # the full sweep (about 15 minutes)
    .venv/bin/python bench/runtime/run.py --quick    # c=1 and 16, short points (a few minutes)

In one run, on the same model files, the same onnxruntime version and session options
(intra_op_num_threads=1, sequential, ORT_ENABLE_ALL, CPU) and the same machine:

* every server is started pinned to core 0 (``taskset -c 0``; its children inherit the mask);
* ``wrk`` (one thread) is pinned to core 1 and POSTs one fixed v2 infer body to 127.0.0.1 with
  1, 2, 4, 8, 16, 32 keep-alive connections, each point bounded in time;
* per point: req/s, p50/p90/p99 latency (wrk's histogram), errors, the server's CPU (utime+stime
  of its whole process tree from /proc/<pid>/stat deltas, 100% = one core), peak RSS of the tree
  (sampled), and what else ran on core 0 meanwhile (from /proc/stat);
* per server: cold start = process start -> the model's v2 ready endpoint answering 200, and a
  correctness check of one answer against onnxruntime's;
* the limit: onnxruntime in-process on core 0, per-call latency at batch 1 and rows/s batched.

Peers run from their own cached virtualenvs (venvs.py). A peer that cannot be installed or started
is recorded with its error and the run goes on. Results: bench/results/runtime-<UTC>.json (and
runtime-latest.json); ``--update-doc`` rewrites the results section of docs/runtime-benchmark.md
and the plot docs/img/runtime-benchmark.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import models as bench_models  # noqa: E402
import venvs  # noqa: E402
from launch import MAX_BATCH, MODEL_CACHE, SERVERS  # noqa: E402
from loadtools import LOAD_TOOLS  # noqa: E402
from measure import Plan, bench_server, inprocess_limit, wait_for_quiet  # noqa: E402
from procfs import busy_processes, cpu_model, loadavg  # noqa: E402
from targets import evaluate_targets  # noqa: E402

from kubemaas_testbed.venvs import pip_freeze  # noqa: E402

RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "runtime-benchmark.md"
PLOT = REPO / "docs" / "img" / "runtime-benchmark.png"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="c=1 and 16, short points")
    ap.add_argument("--servers", nargs="+", default=[s.key for s in SERVERS],
                    choices=[s.key for s in SERVERS])
    ap.add_argument("--models", nargs="+", default=["mlp", "resnet18"],
                    choices=list(bench_models.BUILDERS))
    ap.add_argument("--concurrency", type=int, nargs="+")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--cold-starts", type=int, default=3,
                    help="starts per server on the small model (median reported)")
    ap.add_argument("--max-load", type=float, default=0.0,
                    help="wait (up to --load-wait-s) until the 1-minute load is below this")
    ap.add_argument("--load-wait-s", type=float, default=600)
    ap.add_argument("--retries", type=int, default=2,
                    help="measure a point again (keep the least disturbed) when other processes "
                         "used more than --disturbed-pct of core 0 meanwhile")
    ap.add_argument("--disturbed-pct", type=float, default=10.0)
    ap.add_argument("--load-tool", choices=sorted(LOAD_TOOLS), default="wrk")
    ap.add_argument("--update-doc", action="store_true",
                    help="rewrite the results section of docs/runtime-benchmark.md and the plot")
    ap.add_argument("--no-plot", action="store_true")
    return ap.parse_args(argv)


def _plan(args: argparse.Namespace, server_core: str, load_core: str) -> Plan:
    quick = args.quick
    return Plan(
        concurrency=args.concurrency or ([1, 16] if quick else [1, 2, 4, 8, 16, 32]),
        warm_s={"mlp": 1, "resnet18": 1 if quick else 3},
        measure_s={"mlp": 2 if quick else 4, "resnet18": 4 if quick else 8},
        cold_starts=1 if quick else args.cold_starts,
        server_core=server_core, load_core=load_core, intra=args.threads,
        retries=args.retries, disturbed_pct=args.disturbed_pct, max_load=args.max_load,
        load_wait_s=args.load_wait_s, load_tool=args.load_tool)


def _meta(argv: list[str] | None, stamp: str, plan: Plan, quick: bool,
          ncpu: int) -> dict[str, Any]:
    import onnxruntime

    return {
        "started_utc": stamp, "command": " ".join([".venv/bin/python", "bench/runtime/run.py",
                                                   *(argv or sys.argv[1:])]),
        "quick": quick, "cpu_count": ncpu, "cpu_model": cpu_model(),
        "kernel": platform.release(), "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__, "intra_op_threads": plan.intra,
        "server_core": plan.server_core, "load_core": plan.load_core,
        "loadavg_start": loadavg(), "busy_start": busy_processes(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "runtime_uncommitted": _git("status", "--short", "--", "runtime").splitlines(),
        "concurrency": plan.concurrency,
        "warm_s": plan.warm_s, "measure_s": plan.measure_s, "max_batch_size": MAX_BATCH,
        "retries": plan.retries, "disturbed_pct": plan.disturbed_pct,
        "max_load": plan.max_load,
        "load_tool": plan.load_tool,
    }


def _peer_pythons(servers: list[str], meta: dict[str, Any]
                  ) -> tuple[dict[str, Path | None], dict[str, str]]:
    """Each implementation's interpreter (None: its venv failed, the error in the second dict);
    the peers' package versions go into ``meta``."""
    pythons: dict[str, Path | None] = {"kubemaas": Path(sys.executable)}
    venv_errors: dict[str, str] = {}
    versions: dict[str, dict[str, str]] = {}
    for impl in sorted({s.impl for s in SERVERS if s.key in servers} - {"kubemaas"}):
        print(f"venv {impl} ...", flush=True)
        v = venvs.ensure_venv(impl, venvs.PEERS[impl])
        pythons[impl] = v.python
        if v.error:
            venv_errors[impl] = v.error
            print(f"  {impl}: {v.error[:500]}", flush=True)
        else:
            assert v.python is not None
            versions[impl] = pip_freeze(v.python, ("kserve", "mlserver", "nvidia-pytriton",
                                               "onnxruntime", "numpy", "uvloop"))
    meta["peer_versions"] = versions
    return pythons, venv_errors


def _bench_models(args: argparse.Namespace, plan: Plan, pythons: dict[str, Path | None],
                  venv_errors: dict[str, str],
                  logdir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every (model, server) result, and each model's in-process limit."""
    results: list[dict[str, Any]] = []
    limits: dict[str, Any] = {}
    for name in args.models:
        print(f"model {name} ...", flush=True)
        model = bench_models.ensure_model(name, MODEL_CACHE)
        limits[name] = inprocess_limit(model, plan, 2 if args.quick else 4)
        print(f"  in-process {name}: {json.dumps(limits[name])}", flush=True)
        for srv in SERVERS:
            if srv.key not in args.servers:
                continue
            python = pythons.get(srv.impl)
            if python is None:
                results.append({"server": srv.key, "impl": srv.impl, "model": name,
                                "batching": srv.batching, "body": srv.body, "note": srv.note,
                                "points": [], "cold_start_s": [],
                                "error": f"not installed: {venv_errors.get(srv.impl)}"})
                continue
            results.append(bench_server(srv, python, model, plan, logdir))
    return results, limits


def _write_and_report(doc: dict[str, Any], stamp: str, args: argparse.Namespace) -> None:
    out = RESULTS / f"runtime-{stamp}.json"
    out.write_text(json.dumps(doc, indent=1))
    (RESULTS / "runtime-latest.json").write_text(json.dumps(doc, indent=1))
    import report

    print()
    print(report.markdown_tables(doc))
    print(report.targets_markdown(doc))
    print(f"results: {out.relative_to(REPO)}")
    if not args.no_plot:
        report.plot(out, PLOT)
    if args.update_doc:
        report.update_doc(doc, DOC)
        print(f"updated {DOC.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # SIGTERM (and SIGINT, which a background job may ignore) unwind through the finally
    # blocks that stop the servers this run started
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)

    for tool in (args.load_tool, "taskset"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found (apt-get install -y wrk hey util-linux)",
                  file=sys.stderr)
            return 2
    ncpu = os.cpu_count() or 1
    server_core, load_core = ("0", "1") if ncpu >= 2 else ("0", "0")
    # this process (its /proc sampler) stays off the server's core too
    os.sched_setaffinity(0, {int(load_core)})
    plan = _plan(args, server_core, load_core)

    wait_for_quiet(plan)

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    logdir = RESULTS / f"runtime-{stamp}-logs"
    logdir.mkdir()
    meta = _meta(argv, stamp, plan, args.quick, ncpu)
    print(f"kubemaas runtime benchmark {stamp}: {ncpu} CPUs, server on core {server_core}, "
          f"wrk on core {load_core}, load {meta['loadavg_start']}", flush=True)

    pythons, venv_errors = _peer_pythons(args.servers, meta)
    results, limits = _bench_models(args, plan, pythons, venv_errors, logdir)
    meta["loadavg_end"] = loadavg()
    meta["busy_end"] = busy_processes()
    meta["finished_utc"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())

    doc = {"meta": meta, "inprocess": limits, "results": results}
    doc["targets"] = evaluate_targets(doc)
    _write_and_report(doc, stamp, args)
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=str(REPO), capture_output=True, text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
