"""A decode step through the model's own forward, the direct stack and the traced graph.

    taskset -c 0 .venv/bin/python bench/llm/direct_stack.py --family gemma3_text --size tiny \\
        --rows 16 --rounds 400

The ``--size`` model of ``--family`` (random weights, ``build_llm``) in process, one torch
thread on CPU: ``--rows`` prompts of ``--context`` random tokens run through the engine until
every row decodes, and that first decode-only step of ``--rows`` rows is kept. The same step
then runs through the model's top-level forward (``LanguageModel.forward`` without a stack),
through ``decoder_stack.py``'s direct stack and through ``traced_decode.py``'s graph of it,
``--rounds`` rounds, the order of the three rotating each round. Prints one JSON line: each
way's median step time, the medians of the per-round ratios of the stack and of the graph to
the model's own forward (< 1: faster), whether the three gave the same logits bit for bit,
and the load average.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
for sub in ("runtime", "hack"):
    sys.path.insert(0, str(REPO / sub))

from kubemaas_runtime.llm.attention import PagedStep  # noqa: E402
from kubemaas_runtime.llm.engine import Engine, EngineConfig  # noqa: E402
from kubemaas_runtime.llm.loader import LanguageModel, load_hf  # noqa: E402
from kubemaas_runtime.llm.sampling import SamplingParams  # noqa: E402
from kubemaas_runtime.llm.traced_decode import TracedDecode  # noqa: E402
from kubemaas_testbed.llm_models import build_llm  # noqa: E402

Step = tuple[torch.Tensor, torch.Tensor, torch.Tensor, PagedStep]
WAYS = ("own", "stack", "traced")


def decode_step(lm: LanguageModel, rows: int, context: int) -> Step:
    """The engine's first step in which all ``rows`` rows decode (and nothing else)."""
    assert lm.stack is not None, f"{lm.model_type} is not on the direct stack"
    stack = lm.stack
    kept: list[Step] = []

    def keeping(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                step: PagedStep) -> torch.Tensor:
        if not kept and step.decode_rows == rows and not step.chunks:
            kept.append((input_ids.clone(), position_ids.clone(), keep.clone(), step))
        return stack(input_ids, position_ids, keep, step)

    cfg = EngineConfig(kv_cache_bytes=512 << 20, max_model_len=4 * context, max_num_seqs=rows,
                       max_num_batched_tokens=rows * context, traced_decode=False,
                       decode_lanes=False)
    engine = Engine(dataclasses.replace(lm, stack=keeping), cfg)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 200) for _ in range(context)] for _ in range(rows)]
    engine.generate_sync(prompts, SamplingParams(max_tokens=3, temperature=0.0,
                                                 ignore_eos=True))
    assert kept, "no decode-only step of every row"
    assert kept[0][3].decode_groups is None, "rows attended in groups: the graph would not run"
    return kept[0]


def ways(lm: LanguageModel) -> dict[str, Callable[..., torch.Tensor]]:
    assert lm.stack is not None
    return {"own": dataclasses.replace(lm, stack=None).forward, "stack": lm.stack,
            "traced": TracedDecode(lm.model, lm.stack)}


def alternate(run: dict[str, Callable[..., torch.Tensor]], step: Step, rounds: int
              ) -> tuple[dict[str, list[float]], bool]:
    """Each way's step times over ``rounds`` rounds (the order rotating), after two warm-up
    rounds (the first traces the graph); whether every round's logits were the same."""
    times: dict[str, list[float]] = {w: [] for w in WAYS}
    same = True
    with torch.inference_mode():
        for r in range(rounds + 2):
            order = WAYS[r % 3:] + WAYS[:r % 3]
            got = {}
            for way in order:
                t0 = time.perf_counter()
                got[way] = run[way](*step)
                if r >= 2:
                    times[way].append(time.perf_counter() - t0)
            same = same and all(torch.equal(got["own"], got[w]) for w in WAYS)
    return times, same


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="gemma3_text")
    ap.add_argument("--size", default="tiny", choices=("tiny", "small"))
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=400)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        lm = load_hf(build_llm(Path(tmp) / a.family, family=a.family, size=a.size),
                     device="cpu")
    step = decode_step(lm, a.rows, a.context)
    run = ways(lm)
    times, same = alternate(run, step, a.rounds)
    traced: Any = run["traced"]
    ms = {w: 1e3 * statistics.median(times[w]) for w in WAYS}
    ratio = {w: statistics.median(t / o for t, o in zip(times[w], times["own"], strict=True))
             for w in ("stack", "traced")}
    print(json.dumps({"family": a.family, "size": a.size, "rows": a.rows, "context": a.context,
                      "rounds": a.rounds, "ms": ms, "ratio_to_own": ratio,
                      "bit_equal": same, "replays": traced.replays,
                      "load": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
