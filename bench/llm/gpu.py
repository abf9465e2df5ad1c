"""The GPU check of the LLM runtime, one prepared script that fits in 10 minutes.

A random-weight Llama of about 1 B parameters (``build_llm(size="1b")``: hidden 2048, 16
layers, 32 heads / 8 KV heads) in bfloat16, served by our runtime on CUDA at concurrency 1, 16
and 64, against the in-process limit (the model's own batched forward, ``limit.py``) on the same
GPU. Every request is a streamed chat completion of ``--max-tokens`` tokens (``ignore_eos``),
to 127.0.0.1 only; every answer is compared with the in-process greedy answer to the same prompt
(``limit.py --screen``: batches of 32 prompts). Then the correctness check on the same GPU: the
tiny model in float32, served at concurrency 16, whose greedy answers must equal the in-process
ones (in bfloat16 a random model's near-tied logits let kernel choice flip a token, so the 1 B
figure is reported, not required). ``prompt_steps.py`` times, in process, steps that read 16,
32 and 64 prompts beside 32 decoding rows with the prompts' chunks attended together and one
by one (``prompt_steps.json``, and torch's profiler tables of the 64-prompt step both ways in
``prompt_steps_profile.txt``; the 64-prompt step's chunk batches in the decode rows' layout
against sdpa's own grouped-query attention; 24 steps of new shapes with and without cuDNN's
attention). ``--eager-too`` serves the points again with
``--traced-decode false`` (every step eager: no CUDA graphs), side by side. Writes ``gpu.json``
and ``gpu.md`` (a table) under ``--out``; the model files stay under ``--work``.

On the device machine (its image has torch and transformers 5.17; the runtime is built against
the transformers this repository locks, so carry that one as a wheel, see the device notes):

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux2014_x86_64 -d .whl transformers==5.24.0
    # run, carrying .whl:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
    PYTHONPATH=/tmp/site:runtime:hack PYTHONUNBUFFERED=1 python3 bench/llm/gpu.py --out $OUT

Without a GPU, ``--smoke`` runs the same steps on the CPU with the tiny model, float32 and
small concurrencies (a minute or two), so the script is known to work before device time is
spent on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(msg: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:6.1f} s] {msg}", flush=True)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready within {timeout:.0f} s")


def _prepare(work: Path, size: str, dtype: str, n: int, prompt_tokens: int
             ) -> tuple[Path, Path]:
    import transformers
    from limit import make_prompts

    from kubemaas_testbed.llm_models import build_llm, corpus_text

    model = build_llm(work / f"llm-{size}-{dtype}", size=size, dtype=dtype)
    tok = transformers.AutoTokenizer.from_pretrained(str(model))
    prompts = work / "prompts.json"
    prompts.write_text(json.dumps(make_prompts(tok, corpus_text(), n, prompt_tokens)))
    return model, prompts


def _limit(model: Path, prompts: Path, a: argparse.Namespace, out: Path, dtype: str,
           *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "limit.py"), "--model", str(model), "--prompts",
           str(prompts), "--max-tokens", str(a.max_tokens), "--device", a.device,
           "--dtype", dtype, "--threads", str(a.threads), "--out", str(out), *extra]
    subprocess.run(cmd, check=True, env=_env())
    return dict(json.loads(out.read_text()))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    extra = [str(REPO / "runtime"), str(REPO / "hack")]
    env["PYTHONPATH"] = os.pathsep.join([*filter(None, [env.get("PYTHONPATH")]), *extra])
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def _serve(model: Path, a: argparse.Namespace, port: int, log: Path, dtype: str,
           extra: tuple[str, ...]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "kubemaas_runtime", "--format", "hf", "--model-uri", str(model),
           "--name", "llm", "--host", "127.0.0.1", "--port", str(port), "--device", a.device,
           "--dtype", dtype, "--max-num-seqs", str(max(int(c) for c in a.concurrency.split(","))),
           "--max-model-len", "1024", "--kv-cache-memory", a.kv_cache_memory,
           "--intra-op-threads", str(a.threads), *extra]
    return subprocess.Popen(cmd, env=_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _same(served: str, greedy: str) -> bool:
    """Whether a served answer is the in-process greedy one. A random model's answer can end
    inside a UTF-8 sequence: decoding all its tokens at once ends in U+FFFD, while the server's
    incremental detokenizer holds back the incomplete character (as vLLM's does)."""
    return served.rstrip("\ufffd") == greedy.rstrip("\ufffd")


def _points(model: Path, prompts: Path, a: argparse.Namespace, dtype: str, concs: list[int],
            log: Path, greedy: list[str], t0: float, extra: tuple[str, ...] = ()
            ) -> tuple[float, list[dict[str, Any]]]:
    """Serve ``model`` and drive it at each concurrency in turn (2 x c requests, the first
    point after 2 warm-up requests); each answer is compared with ``greedy``, the in-process
    greedy answer to its prompt. (time to ready, the points)"""
    port = _free_port()
    server = _serve(model, a, port, log, dtype, extra)
    points: list[dict[str, Any]] = []
    spy: subprocess.Popen[bytes] | None = None
    try:
        ready = _wait_ready(port, server, 240)
        _say(f"server ready in {ready:.1f} s ({model.name})", t0)
        if a.py_spy:  # the server's threads sampled over the points (collapsed stacks)
            spy = subprocess.Popen([a.py_spy, "record", "--pid", str(server.pid), "--threads",
                                    "--rate", "250", "--format", "raw", "--nonblocking",
                                    "-o", str(a.out / f"py-spy-{model.name}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        texts = json.loads(prompts.read_text())
        offset = 0
        for i, c in enumerate(concs):
            requests, warmup = max(4, 2 * c), 2 if i == 0 else 0
            p = asyncio.run(loadgen.run_point(
                port, "/v1/chat/completions", "llm", texts, c, requests, warmup,
                a.point_seconds, a.max_tokens, 120, offset=offset, ignore_eos=True))
            offset += requests + warmup
            answers = p.pop("texts", {})
            differing = {int(k): t for k, t in answers.items() if not _same(t, greedy[int(k)])}
            p["answers_equal_inprocess_greedy"] = f"{len(answers) - len(differing)}/{len(answers)}"
            p["answers_differing"] = differing
            p.pop("timelines", None)
            points.append(p)
            _say(f"c={c}: {p['output_tok_s']} tok/s, TTFT p50 {p['ttft_p50_ms']} ms, "
                 f"ITL p50/p99 {p['itl_p50_ms']}/{p['itl_p99_ms']} ms, ok {p['ok']} "
                 f"cut {p['cut']} errors {p['errors']}, answers = in-process greedy "
                 f"{p['answers_equal_inprocess_greedy']}", t0)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(30)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    return ready, points


def _table(limit: dict[str, Any], points: list[dict[str, Any]], check: dict[str, Any],
           steps: list[dict[str, Any]], a: argparse.Namespace) -> str:
    by_batch = {b["batch"]: b for b in limit["batches"]}
    rows = [f"Model: random Llama `{a.size}`, {a.dtype}, {a.device}; prompts "
            f"{a.prompt_tokens} tokens, {a.max_tokens} tokens out; in-process prefill of one "
            f"prompt {limit['prefill_ms']} ms.", "",
            "| c | output tok/s | in-process decode tok/s at that batch | % | TTFT p50 / p99 ms "
            "| ITL p50 / p99 ms | ok/cut/sent | answers = in-process greedy |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        lim = by_batch.get(p["concurrency"], {}).get("decode_tok_s")
        pct = f"{100 * p['output_tok_s'] / lim:.0f} %" if lim and p["output_tok_s"] else "-"
        rows.append(f"| {p['concurrency']}{' eager' if p.get('eager') else ''} | "
                    f"{p['output_tok_s']} | {lim} | {pct} | "
                    f"{p['ttft_p50_ms']} / {p['ttft_p99_ms']} | {p['itl_p50_ms']} / "
                    f"{p['itl_p99_ms']} | {p['ok']}/{p['cut']}/{p['requests']} | "
                    f"{p['answers_equal_inprocess_greedy']} |")
    rows += ["", f"In-process greedy answers at batch 1 equal to those in batches of 32: "
             f"{check['control']}.", "", f"Correctness check (tiny model, float32, "
             f"{a.device}, c=16): served greedy answers equal to the in-process ones: "
             f"{check['answers_equal_inprocess_greedy']} "
             f"(ok {check['ok']}, errors {check['errors']}).", "",
             "Steps reading many prompts beside decoding rows, in process (prompt_steps.py), "
             "median ms: prompts' chunks attended together / one by one (ratio, pairs faster):"]
    rows += [f"* {s['prompts']} prompts + {s['decode_rows']} decodes: {s['grouped_ms']:.2f} / "
             f"{s['alone_ms']:.2f} ({s['ratio']:.3f}, {s['faster_pairs']}/{s['pairs']})"
             for s in steps if not s.get("fresh") and not s.get("layouts")]
    rows += [f"* {s['steps']} steps of new shapes (1-8 prompts beside the decodes), "
             f"cuDNN {'on' if s['cudnn'] else 'off'}: median {s['median_ms']:.2f} ms, p90 "
             f"{s['p90_ms']:.2f}, max {s['max_ms']:.2f}, total {s['total_ms']:.1f}"
             for s in steps if s.get("fresh")]
    rows += [f"* {s['prompts']} prompts' chunk batches, a KV head's query heads as its rows / "
             f"sdpa's enable_gqa: {s['grouped_rows_ms']:.2f} / {s['sdpa_gqa_ms']:.2f} ms "
             f"({s['ratio']:.3f}, {s['faster_pairs']}/{s['pairs']}; max logit diff "
             f"{s['max_logit_diff']:.1e})" for s in steps if s.get("layouts")]
    return "\n".join(rows) + "\n"


def _control(model: Path, prompts: Path, a: argparse.Namespace, greedy: list[str]) -> str:
    """How many of the first ``--control`` prompts the in-process greedy answer at batch 1
    equals the one in the screen's batches: how far the dtype's kernels alone move answers."""
    texts = json.loads(prompts.read_text())[:a.control]
    first = prompts.with_name("control-prompts.json")
    first.write_text(json.dumps(texts))
    alone = _limit(model, first, a, a.out / "control.json", a.dtype, "--screen",
                   "--screen-batch", "1")["texts"]
    return f"{sum(_same(x, y) for x, y in zip(alone, greedy, strict=False))}/{len(alone)}"


def _check(a: argparse.Namespace, t0: float) -> dict[str, Any]:
    """The tiny model in float32 on the same device, served at concurrency 16: its greedy
    answers must equal the in-process ones."""
    model, prompts = _prepare(a.work / "check", "tiny", "float32", 34, a.prompt_tokens)
    screen = _limit(model, prompts, a, a.out / "check-screen.json", "float32", "--screen")
    _, points = _points(model, prompts, a, "float32", [16], a.out / "check-server.log",
                        screen["texts"], t0)
    return points[0]


def _prompt_steps(model: Path, a: argparse.Namespace) -> list[dict[str, Any]]:
    """Steps reading many prompts, their chunks attended together or one by one
    (prompt_steps.py), in process on the same device, with torch's profiler tables of the
    largest step both ways (``prompt_steps_profile.txt``)."""
    out = a.out / "prompt_steps.json"
    cmd = [sys.executable, str(HERE / "prompt_steps.py"), "--model", str(model), "--device",
           a.device, "--dtype", a.dtype, "--threads", str(a.threads), "--prompt-tokens",
           str(a.prompt_tokens), "--decode-rows", "4" if a.smoke else "32", "--prompts",
           "4,16" if a.smoke else "16,32,64", "--pairs", "4" if a.smoke else "20",
           "--out", str(out), "--profile", str(a.out / "prompt_steps_profile.txt"),
           "--fresh", "4" if a.smoke else "24", "--layouts"]
    subprocess.run(cmd, check=True, env=_env())
    doc = json.loads(out.read_text())
    layouts = [{"layouts": True, **doc["layouts"]}] if doc.get("layouts") else []
    return [*doc["rows"], *({"fresh": True, **r} for r in doc["fresh"]), *layouts]


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, help="model files (default: OUT/work)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, c=1,4")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--point-seconds", type=float, default=60)
    ap.add_argument("--control", type=int, default=32,
                    help="prompts answered in-process at batch 1 too (0: none)")
    ap.add_argument("--eager-too", action="store_true",
                    help="the points again with --traced-decode false (no CUDA graphs)")
    ap.add_argument("--py-spy", help="py-spy executable: sample the servers during the points")
    a = ap.parse_args(argv)
    a.size, a.device, a.dtype, a.threads, a.kv_cache_memory = "1b", "cuda", "bfloat16", 4, "16Gi"
    if a.smoke:
        a.size, a.device, a.dtype, a.threads, a.kv_cache_memory = "tiny", "cpu", "float32", 1, \
            "256Mi"
        a.concurrency = "1,4"
    elif not _cuda_available():  # every step would fail on its first CUDA tensor
        print("llm/gpu.py: skipped: torch.cuda.is_available() is False: run it on a GPU machine, "
              "or with --smoke on the CPU", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    a.out.mkdir(parents=True, exist_ok=True)
    a.work = a.work or a.out / "work"
    concs = [int(c) for c in a.concurrency.split(",")]
    n = sum(max(4, 2 * c) for c in concs) + 2
    model, prompts = _prepare(a.work, a.size, a.dtype, n, a.prompt_tokens)
    _say(f"model and {n} prompts ready: {model}", t0)
    limit = _limit(model, prompts, a, a.out / "limit.json", a.dtype, "--batches", a.concurrency)
    _say(f"in-process limit: {json.dumps(limit['batches'])}", t0)
    screen = _limit(model, prompts, a, a.out / "screen.json", a.dtype, "--screen")
    _say("in-process greedy answers ready", t0)
    control = _control(model, prompts, a, screen["texts"]) if a.control else "-"
    _say(f"in-process greedy at batch 1 = in batches of 32: {control}", t0)
    steps = _prompt_steps(model, a)
    ready, points = _points(model, prompts, a, a.dtype, concs, a.out / "server.log",
                            screen["texts"], t0)
    eager: list[dict[str, Any]] = []
    if a.eager_too:  # the same points with every step run eagerly (no CUDA graphs)
        _, eager = _points(model, prompts, a, a.dtype, concs, a.out / "server-eager.log",
                           screen["texts"], t0, ("--traced-decode", "false"))
    check = _check(a, t0)
    check["control"] = control
    doc = {"settings": {k: str(v) for k, v in vars(a).items()}, "limit": limit,
           "server_ready_s": round(ready, 2), "points": points, "points_eager": eager,
           "prompt_steps": steps,
           "check": check, "wall_s": round(time.monotonic() - t0, 1)}
    (a.out / "gpu.json").write_text(json.dumps(doc, indent=1))
    table = _table(limit, points + [{**p, "eager": True} for p in eager], check, steps, a)
    (a.out / "gpu.md").write_text(table)
    print(table, flush=True)
    checked = check["answers_equal_inprocess_greedy"].split("/")
    served = all(p["errors"] == 0 and p["ok"] for p in points + eager)
    return 0 if served and checked[0] == checked[1] != "0" else 1


if __name__ == "__main__":
    sys.exit(main())
