"""A decode step with long-context rows beside short ones: rows attended in groups or padded.

    taskset -c 0 .venv/bin/python bench/llm/decode_groups.py --size small \\
        --short-rows 8 --short-context 80 --long-rows 1 --long-context 1040 --pairs 20

The engine's own forward (the model's modules over one packed decode-only step, paged
attention), in process, one torch thread on CPU: ``--short-rows`` sequences of
``--short-context`` tokens and ``--long-rows`` of ``--long-context`` each decode one token. The
same step runs alternately with its rows in groups of similar context width
(``packing.decode_groups``, what the engine does on CPU) and with every row padded to the
longest context (what it did before); each of ``--pairs`` pairs times both, the order
alternating. Prints the median step time of each, the median of the pairs' ratios (< 1: grouped
faster) and the largest difference between the two steps' logits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from itertools import count
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import prompt_steps  # noqa: E402  (puts runtime/ and hack/ on the path)

from kubemaas_runtime.llm.detok import Detokenizer  # noqa: E402
from kubemaas_runtime.llm.packing import PackedStep, decode_groups, pack  # noqa: E402
from kubemaas_runtime.llm.sampling import SamplingParams  # noqa: E402
from kubemaas_runtime.llm.scheduler import Sequence  # noqa: E402

BLOCK = prompt_steps.BLOCK


def decode_step(lm: Any, contexts: list[int], seed: int = 0) -> PackedStep:
    """One decode-only step of rows with these contexts, in ``decode_groups``' order and
    groups; the KV pool filled with noise (attention reads it, its values do not matter)."""
    rng = random.Random(seed)
    blocks = count(1)
    rows = []
    for rid, n in enumerate(contexts):
        s = Sequence(rid, [rng.randrange(3, 200) for _ in range(n)], SamplingParams(max_tokens=4),
                     sink=lambda _: None, detok=Detokenizer(None))
        s.computed = n - 1
        s.blocks = [next(blocks) for _ in range(-(-n // BLOCK))]
        rows.append(s)
    store = prompt_steps.store_for(lm, next(blocks))
    for pool in (*store.keys, *store.values):
        pool.normal_()
    ordered, groups = decode_groups(rows, BLOCK)
    return pack(ordered, [], store, BLOCK, groups)


def timed(lm: Any, packed: PackedStep, grouped: bool) -> tuple[float, torch.Tensor]:
    paged = packed.paged if grouped else dataclasses.replace(packed.paged, decode_groups=None)
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = lm.stack(packed.input_ids, packed.position_ids, packed.keep, paged)
    return time.perf_counter() - t0, logits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="small", choices=("tiny", "small"))
    ap.add_argument("--short-rows", type=int, default=8)
    ap.add_argument("--short-context", type=int, default=80)
    ap.add_argument("--long-rows", type=int, default=1)
    ap.add_argument("--long-context", type=int, default=1040)
    ap.add_argument("--pairs", type=int, default=20)
    prompt_steps.model_options(ap)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    model_dir, lm = prompt_steps.load_model(a)
    contexts = [a.short_context] * a.short_rows + [a.long_context] * a.long_rows
    packed = decode_step(lm, contexts)
    times, ratios, diff = prompt_steps._alternate(lambda g: timed(lm, packed, g), a.pairs)
    row = {"contexts": contexts, "groups": packed.paged.decode_groups,
           "grouped_ms": 1e3 * statistics.median(times[True]),
           "padded_ms": 1e3 * statistics.median(times[False]),
           "ratio": statistics.median(ratios), "faster_pairs": sum(r < 1 for r in ratios),
           "pairs": a.pairs, "max_logit_diff": diff, "load": os.getloadavg()[0]}
    print(f"# {model_dir.name}, one thread, load {row['load']:.2f}: {a.short_rows} rows of "
          f"{a.short_context} tokens and {a.long_rows} of {a.long_context}; groups "
          f"{row['groups']}; grouped {row['grouped_ms']:.2f} ms, padded {row['padded_ms']:.2f} "
          f"ms, ratio {row['ratio']:.3f} ({row['faster_pairs']}/{a.pairs} pairs faster), "
          f"max logit diff {diff:.1e}")
    if a.out:
        a.out.write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
