"""A step that reads many prompts, with their chunks attended together or one by one.

    taskset -c 0 .venv/bin/python bench/llm/prompt_steps.py --size tiny --prompts 4,16,32 \\
        --decode-rows 16 --pairs 40

The engine's own forward (the model's modules over one packed step, paged attention), in
process, one torch thread on CPU: ``--decode-rows`` sequences each decoding one token beside
``P`` prompts of ``--prompt-tokens`` tokens (lengths spread ±25 %, a fixed seed), as a burst of
requests lands in one step. The same packed step runs alternately with its chunks grouped into
padded attention calls (``ChunkBatch``, what the engine does) and with every chunk attended on
its own (what it did before); each of ``--pairs`` pairs times both, the order alternating. The
median step time of each and the median of the pairs' ratios are printed (ratio < 1: grouped
faster), with the largest difference between the two steps' logits. ``--profile FILE`` also
writes torch's profiler tables (self CPU time and, on a GPU, self device time per operator) for
a few steps of the largest prompt count each way: where a step's time goes, not only how much.
``--fresh N`` (CUDA) times N steps of shapes not run before (1-8 prompts of random lengths
beside the decode rows, each step run once, as served steps come) with the engine's attention
kernels (cuDNN's left out, attention.choose_kernels) and then with torch's default choice
(cuDNN first on Hopper), each on its own seeds. ``--layouts`` times the largest step with its
chunk batches' grouped-query call in the decode rows' layout (what the engine does on CUDA)
against sdpa's own ``enable_gqa`` (what it does on CPU), alternated over ``--pairs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import time
from itertools import count
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
for sub in ("runtime", "hack"):
    sys.path.insert(0, str(REPO / sub))

from kubemaas_runtime.llm import attention  # noqa: E402
from kubemaas_runtime.llm.attention import ChunkBatch  # noqa: E402
from kubemaas_runtime.llm.detok import Detokenizer  # noqa: E402
from kubemaas_runtime.llm.kv_cache import KVStore  # noqa: E402
from kubemaas_runtime.llm.loader import load_hf  # noqa: E402
from kubemaas_runtime.llm.packing import PackedStep, pack  # noqa: E402
from kubemaas_runtime.llm.sampling import SamplingParams  # noqa: E402
from kubemaas_runtime.llm.scheduler import Sequence  # noqa: E402
from kubemaas_testbed.llm_models import build_llm  # noqa: E402

BLOCK = 16
PROFILED_STEPS = 3
PROFILE_ROWS = 25


def _step(lm: Any, prompts: int, decode_rows: int, prompt_tokens: int, seed: int) -> PackedStep:
    """One packed step: ``decode_rows`` sequences 64 tokens in, then the prompts' whole chunks."""
    rng = random.Random(seed)
    blocks = count(1)

    def sequence(rid: int, length: int, computed: int) -> Sequence:
        s = Sequence(rid, [rng.randrange(3, 200) for _ in range(length)],
                     SamplingParams(max_tokens=4), sink=lambda _: None, detok=Detokenizer(None))
        s.computed = computed
        s.blocks = [next(blocks) for _ in range(-(-length // BLOCK))]
        return s
    decode = [sequence(i, 65, 64) for i in range(decode_rows)]
    spread = max(1, prompt_tokens // 4)
    prefill = []
    for i in range(prompts):
        n = prompt_tokens + rng.randint(-spread, spread)
        prefill.append((sequence(decode_rows + i, n, 0), n))
    return pack(decode, prefill, store_for(lm, next(blocks)), BLOCK)


def model_options(ap: argparse.ArgumentParser) -> None:
    """The options of the in-process step benches: where the model is, where figures go."""
    ap.add_argument("--work", type=Path, default=None, help="model directory cache")
    ap.add_argument("--model", type=Path, default=None,
                    help="an existing model directory (default: build --size under --work)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON")


def load_model(a: argparse.Namespace, device: str = "cpu", dtype: str = "float32"
               ) -> tuple[Path, Any]:
    """``--model``, or the ``--size`` bench model built under ``--work``, loaded for the
    engine's direct forward; its directory and the model."""
    work = a.work or Path(tempfile.gettempdir()) / "kubemaas-prompt-steps"
    model_dir = a.model or work / f"{a.size}-{dtype}"
    if not (model_dir / "config.json").exists():
        build_llm(model_dir, size=a.size, dtype=dtype)
    lm = load_hf(model_dir, device=device, dtype=dtype)
    assert lm.stack is not None, "the engine's direct forward is needed"
    return model_dir, lm


def store_for(lm: Any, num_blocks: int) -> KVStore:
    """A KV pool of ``num_blocks`` blocks shaped for the model (its values left as allocated)."""
    cfg = lm.model.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return KVStore(cfg.num_hidden_layers, num_blocks, BLOCK, kv_heads, head_dim, lm.dtype,
                   lm.device)


def _timed(lm: Any, packed: PackedStep, grouped: bool) -> tuple[float, torch.Tensor]:
    dev = lm.device
    paged = packed.paged if grouped else dataclasses.replace(packed.paged, units=None)
    args = (packed.input_ids.to(dev), packed.position_ids.to(dev), packed.keep.to(dev))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = lm.stack(*args, paged.to(dev))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, logits


def _alternate(run: Any, pairs: int) -> tuple[dict[bool, list[float]], list[float], float]:
    """``run(flag)`` -> (seconds, logits), both ways warmed, then ``pairs`` pairs in alternating
    order: each way's times, each pair's ratio (True / False), the largest logit difference."""
    for flag in (True, False, True, False):
        run(flag)
    times: dict[bool, list[float]] = {True: [], False: []}
    ratios = []
    diff = 0.0
    for i in range(pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        got = {flag: run(flag) for flag in order}
        for flag in order:
            times[flag].append(got[flag][0])
        ratios.append(got[True][0] / got[False][0])
        diff = max(diff, float((got[True][1] - got[False][1]).abs().max()))
    return times, ratios, diff


def measure(lm: Any, prompts: int, a: argparse.Namespace) -> dict[str, Any]:
    packed = _step(lm, prompts, a.decode_rows, a.prompt_tokens, a.seed)
    units = packed.paged.units or []
    times, ratios, diff = _alternate(lambda grouped: _timed(lm, packed, grouped), a.pairs)
    return {
        "prompts": prompts, "decode_rows": a.decode_rows, "tokens": packed.input_ids.shape[1],
        "calls_grouped": len(units) or len(packed.paged.chunks),
        "batches": sum(isinstance(u, ChunkBatch) for u in units),
        "grouped_ms": 1e3 * statistics.median(times[True]),
        "alone_ms": 1e3 * statistics.median(times[False]),
        "ratio": statistics.median(ratios), "faster_pairs": sum(r < 1 for r in ratios),
        "pairs": a.pairs, "max_logit_diff": diff,
    }


def layouts(lm: Any, prompts: int, a: argparse.Namespace) -> dict[str, Any]:
    """The chunk batches' grouped-query call in the decode rows' layout (a KV head's query
    heads as its rows; attention.GROUPED_ROWS_ON) against sdpa's own enable_gqa, alternated."""
    packed = _step(lm, prompts, a.decode_rows, a.prompt_tokens, a.seed)
    engine_choice = attention.GROUPED_ROWS_ON

    def run(rows_layout: bool) -> tuple[float, torch.Tensor]:
        attention.GROUPED_ROWS_ON = {lm.device.type} if rows_layout else set()
        return _timed(lm, packed, True)
    try:
        times, ratios, diff = _alternate(run, a.pairs)
    finally:
        attention.GROUPED_ROWS_ON = engine_choice
    return {"prompts": prompts, "grouped_rows_ms": 1e3 * statistics.median(times[True]),
            "sdpa_gqa_ms": 1e3 * statistics.median(times[False]),
            "ratio": statistics.median(ratios), "faster_pairs": sum(r < 1 for r in ratios),
            "pairs": a.pairs, "max_logit_diff": diff}


def fresh(lm: Any, a: argparse.Namespace) -> list[dict[str, Any]]:
    """``a.fresh`` steps of new shapes, each timed once, without and then with cuDNN."""
    rows = []
    for base, cudnn in ((10_000, False), (20_000, True)):
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        times = []
        for i in range(a.fresh):
            prompts = random.Random(base + i).randint(1, 8)
            times.append(_timed(lm, _step(lm, prompts, a.decode_rows, a.prompt_tokens,
                                          base + i), True)[0] * 1e3)
        times.sort()
        rows.append({"cudnn": cudnn, "steps": a.fresh, "median_ms": statistics.median(times),
                     "p90_ms": times[int(0.9 * (len(times) - 1))], "max_ms": times[-1],
                     "total_ms": sum(times)})
    torch.backends.cuda.enable_cudnn_sdp(False)  # the engine's choice again
    return rows


def profile(lm: Any, prompts: int, a: argparse.Namespace, path: Path) -> None:
    """torch's profiler over ``PROFILED_STEPS`` steps each way, its operator tables to ``path``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    packed = _step(lm, prompts, a.decode_rows, a.prompt_tokens, a.seed)
    cuda = lm.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    parts = []
    for grouped in (True, False):
        _timed(lm, packed, grouped)
        with torch_profile(activities=activities) as prof:
            for _ in range(PROFILED_STEPS):
                _timed(lm, packed, grouped)
        events = prof.key_averages()
        name = "grouped (ChunkBatch calls)" if grouped else "each chunk alone"
        for key in ("self_cpu_time_total", *(("self_device_time_total",) if cuda else ())):
            parts.append(f"## {prompts} prompts + {a.decode_rows} decode rows, {name}, "
                         f"{PROFILED_STEPS} steps, by {key}\n\n"
                         + events.table(sort_by=key, row_limit=PROFILE_ROWS))
    path.write_text("\n\n".join(parts) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="tiny", choices=("tiny", "small", "1b"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompts", default="4,16,32")
    ap.add_argument("--prompt-tokens", type=int, default=40)
    ap.add_argument("--decode-rows", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    model_options(ap)
    ap.add_argument("--layouts", action="store_true",
                    help="the largest step's chunk batches in the grouped-rows layout against "
                         "sdpa's enable_gqa")
    ap.add_argument("--fresh", type=int, default=0,
                    help="CUDA: steps of new shapes timed once each, without and with cuDNN")
    ap.add_argument("--profile", type=Path, default=None,
                    help="write torch profiler tables of the largest prompt count's steps")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model_dir, lm = load_model(a, a.device, a.dtype)
    rows = [measure(lm, int(p), a) for p in a.prompts.split(",")]
    print(f"# {model_dir.name} {a.dtype} on {a.device}, {a.threads} thread(s), "
          f"load {os.getloadavg()[0]:.2f}; {a.decode_rows} decode rows, prompts of "
          f"{a.prompt_tokens} ± 25 % tokens, {a.pairs} alternated pairs")
    print("| prompts | tokens | attention calls (batches) | grouped ms | alone ms | ratio "
          "(pairs faster) | max logit diff |")
    print("|---:|---:|---|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['prompts']} | {r['tokens']} | {r['calls_grouped']} ({r['batches']}) | "
              f"{r['grouped_ms']:.2f} | {r['alone_ms']:.2f} | {r['ratio']:.3f} "
              f"({r['faster_pairs']}/{r['pairs']}) | {r['max_logit_diff']:.1e} |")
    largest = max(int(p) for p in a.prompts.split(","))
    layout = layouts(lm, largest, a) if a.layouts else None
    if layout:
        print(f"* {largest} prompts' chunk batches, grouped rows / sdpa GQA: "
              f"{layout['grouped_rows_ms']:.2f} / {layout['sdpa_gqa_ms']:.2f} ms (ratio "
              f"{layout['ratio']:.3f}, {layout['faster_pairs']}/{layout['pairs']} pairs faster; "
              f"max logit diff {layout['max_logit_diff']:.1e})")
    fresh_rows = fresh(lm, a) if a.fresh and lm.device.type == "cuda" else []
    for r in fresh_rows:
        print(f"* {r['steps']} steps of new shapes, cuDNN {'on' if r['cudnn'] else 'off'}: "
              f"median {r['median_ms']:.2f} ms, p90 {r['p90_ms']:.2f}, max {r['max_ms']:.2f}, "
              f"total {r['total_ms']:.1f}")
    if a.profile:
        profile(lm, largest, a, a.profile)
    if a.out:
        args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
        a.out.write_text(json.dumps({"args": args, "rows": rows, "fresh": fresh_rows,
                                      "layouts": layout}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
