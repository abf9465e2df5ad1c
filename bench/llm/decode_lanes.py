"""Decode steps reading the rows' lanes or gathering from the paged pool (llm/decode_lanes.py).

    taskset -c 0 .venv/bin/python bench/llm/decode_lanes.py --size small --rows 16 \\
        --contexts 80,560,1040 --pairs 20 --answers 512 --runs 2

The engine's own forward, in process, one torch thread on CPU, the heap kept as the engine
keeps it (heap.py). Two measurements, each alternating the two ways:

* **steps**: a decode-only step of ``--rows`` rows, all of one context, for each of
  ``--contexts``: the direct stack with the decode attention over the lanes (filled once,
  beforehand; small steps too, under ``LANES_FROM_BYTES``) and over blocks gathered from
  the pool, ``--pairs`` pairs, the order alternating;
  the median step time of each, the median of the pairs' ratios (< 1: lanes faster) and the
  largest difference between the two steps' logits;
* **answers** (``--answers N``): the whole engine (traced decode steps, defaults otherwise,
  a 1 GiB KV cache) answering ``--rows`` prompts of 40 random tokens with N greedy tokens each,
  ``--runs`` runs each way (alternating): output tokens per second of the run, the steps that
  read the lanes, the lanes filled from the pool, the lanes' peak bytes, and whether both ways
  gave the same answers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import decode_groups  # noqa: E402  (puts runtime/ and hack/ on the path)
import prompt_steps  # noqa: E402

from kubemaas_runtime.llm import decode_lanes  # noqa: E402
from kubemaas_runtime.llm.decode_lanes import DecodeLanes  # noqa: E402
from kubemaas_runtime.llm.engine import Engine, EngineConfig  # noqa: E402
from kubemaas_runtime.llm.heap import keep_freed_memory  # noqa: E402
from kubemaas_runtime.llm.packing import PackedStep  # noqa: E402
from kubemaas_runtime.llm.sampling import SamplingParams  # noqa: E402

BLOCK = prompt_steps.BLOCK


def step_pair(lm: Any, rows: int, context: int, pairs: int) -> dict[str, Any]:
    packed = decode_groups.decode_step(lm, [context] * rows)
    paged = packed.paged
    lanes = DecodeLanes(paged.store, BLOCK, 1 << 40)
    assert paged.decode_blocks is not None
    width = -(-context // BLOCK)
    seqs = [_Row(paged.decode_blocks[i, :width].tolist(), context - 1) for i in range(rows)]
    lanes_from = decode_lanes.LANES_FROM_BYTES
    decode_lanes.LANES_FROM_BYTES = 1  # lanes for steps of any size
    try:
        arranged = lanes.arrange(seqs)
    finally:
        decode_lanes.LANES_FROM_BYTES = lanes_from
    assert arranged is not None

    def run(use_lanes: bool) -> tuple[float, torch.Tensor]:
        paged.lanes = lanes if use_lanes else None
        paged.decode_positions = packed.position_ids[0] if use_lanes else None
        return timed(lm, packed)

    times, ratios, diff = prompt_steps._alternate(run, pairs)
    return {"rows": rows, "context": context, "lanes_ms": 1e3 * statistics.median(times[True]),
            "pool_ms": 1e3 * statistics.median(times[False]),
            "ratio": statistics.median(ratios), "faster_pairs": sum(r < 1 for r in ratios),
            "pairs": pairs, "max_logit_diff": diff, "load": os.getloadavg()[0]}


class _Row:
    """What ``DecodeLanes`` reads of a decode row: its blocks and its computed tokens."""

    def __init__(self, blocks: list[int], computed: int) -> None:
        self.blocks, self.computed = blocks, computed


def timed(lm: Any, packed: PackedStep) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = lm.stack(packed.input_ids, packed.position_ids, packed.keep, packed.paged)
    return time.perf_counter() - t0, logits


def answers(lm: Any, rows: int, tokens: int, runs: int) -> dict[str, Any]:
    rng = random.Random(0)
    prompts = [[rng.randrange(3, lm.vocab_size) for _ in range(40)] for _ in range(rows)]
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    config = EngineConfig(kv_cache_bytes=1 << 30, max_model_len=2048, max_num_seqs=32)
    got: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    outputs: dict[bool, list[list[int]]] = {}
    for i in range(runs):
        for use_lanes in (True, False) if i % 2 == 0 else (False, True):
            engine = Engine(lm, EngineConfig(**{**config.__dict__, "decode_lanes": use_lanes}))
            engine.generate_sync(prompts[:2], SamplingParams(max_tokens=4))  # trace, warm
            peak, read = [0], [0]
            if engine.lanes is not None:
                watch(engine.lanes, peak, read)
            steps, t0 = engine.steps, time.perf_counter()
            outputs[use_lanes] = engine.generate_sync(prompts, params)
            seconds = time.perf_counter() - t0
            got[use_lanes].append({
                "tokens_per_s": rows * tokens / seconds, "seconds": seconds,
                "steps": engine.steps - steps, "lane_steps": read[0],
                "filled": engine.lanes.filled if engine.lanes else 0, "peak_bytes": peak[0]})
    return {"rows": rows, "answer_tokens": tokens, "runs": got,
            "same_answers": outputs[True] == outputs[False], "load": os.getloadavg()[0]}


def watch(lanes: DecodeLanes, peak: list[int], read: list[int]) -> None:
    """Count the steps ``lanes`` served and their peak size (wrapping ``arrange``)."""
    arrange = lanes.arrange

    def counted(decode: Any) -> Any:
        out = arrange(decode)
        read[0] += out is not None
        peak[0] = max(peak[0], lanes.nbytes)
        return out

    lanes.arrange = counted  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="small", choices=("tiny", "small"))
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--contexts", default="80,560,1040")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--answers", type=int, default=0, help="answer tokens (0: steps only)")
    ap.add_argument("--runs", type=int, default=2)
    prompt_steps.model_options(ap)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    keep_freed_memory()
    model_dir, lm = prompt_steps.load_model(a)
    result: dict[str, Any] = {"model": model_dir.name, "steps": []}
    for context in (int(c) for c in a.contexts.split(",") if c):
        row = step_pair(lm, a.rows, context, a.pairs)
        result["steps"].append(row)
        print(f"# {model_dir.name}, one thread, load {row['load']:.2f}: {a.rows} rows of "
              f"{context} tokens: lanes {row['lanes_ms']:.2f} ms, pool {row['pool_ms']:.2f} ms, "
              f"ratio {row['ratio']:.3f} ({row['faster_pairs']}/{a.pairs} pairs faster), "
              f"max logit diff {row['max_logit_diff']:.1e}", flush=True)
    if a.answers:
        res = answers(lm, a.rows, a.answers, a.runs)
        result["answers"] = res
        for flag, name in ((True, "lanes"), (False, "pool")):
            for r in res["runs"][flag]:
                print(f"# answers, {name}: {a.rows} x {a.answers} tokens in {r['seconds']:.1f} s "
                      f"= {r['tokens_per_s']:.1f} tok/s; {r['lane_steps']}/{r['steps']} steps "
                      f"read lanes, {r['filled']} filled, peak {r['peak_bytes'] >> 20} MiB",
                      flush=True)
        print(f"# same answers both ways: {res['same_answers']}; load {res['load']:.2f}")
    if a.out:
        a.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
