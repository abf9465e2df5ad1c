"""What LoRA adapters cost the engine: batched greedy decoding in process, the same requests with
LoRA off (what a model with an adapter merged into its weights costs), with LoRA on and every
request of the base model, every request of one adapter, half of them of one adapter, and a
third each of two adapters and the base model.

    taskset -c 0 .venv/bin/python bench/llm/lora.py --size tiny --batch 16 --max-tokens 64

The model is a random-weight Llama of the testbed's (``--size`` tiny or small), the adapters
PEFT's (rank ``--rank`` on all seven projections, random weights). One torch thread; the
configurations run in turn ``--repeats`` times and each row is the median. Prints a table.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapters(model_dir: Path, out: Path, rank: int) -> list[Path]:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    base = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir))
    paths = []
    for seed in (1, 2):
        tuned = get_peft_model(copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank,
                                                               target_modules=TARGETS))
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, param in tuned.named_parameters():
                if "lora_" in name:
                    param.normal_(0, 0.02)
        tuned.save_pretrained(str(out / f"adapter{seed}"))
        paths.append(out / f"adapter{seed}")
    return paths


def engine(model_dir: Path, adapters: list[Path] | None, batch: int) -> tuple[Any, list[int]]:
    from kubemaas_runtime.llm.engine import Engine, EngineConfig
    from kubemaas_runtime.llm.loader import load_hf
    from kubemaas_runtime.llm.lora import LoraSet

    lm = load_hf(model_dir, device="cpu", dtype="float32")
    ids: list[int] = []
    if adapters is not None:
        lm.loras = LoraSet(lm.model, max_loras=2, max_rank=64)
        for i, path in enumerate(adapters):
            adapter = lm.loras.read(f"a{i}", path)
            lm.loras.add(adapter)
            ids.append(adapter.id)
    eng = Engine(lm, EngineConfig(kv_cache_bytes=512 << 20, max_model_len=512,
                                  max_num_seqs=batch, prefix_caching=False))
    return eng, ids


def timed(eng: Any, prompts: list[list[int]], loras: list[int], max_tokens: int) -> float:
    """Output tokens per second of the whole batch (prefill included)."""
    from kubemaas_runtime.llm.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    outs = eng.generate_sync(prompts, params, loras)
    took = time.perf_counter() - t0
    assert all(len(o) == max_tokens for o in outs)
    return len(prompts) * max_tokens / took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from kubemaas_testbed.llm_models import build_llm

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="kubemaas-lora-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # the model and its adapters
    model_dir = build_llm(work / "model", size=args.size)
    adapters = make_adapters(model_dir, work, args.rank)
    off, _ = engine(model_dir, None, args.batch)
    on, (first, second) = engine(model_dir, adapters, args.batch)
    n = args.batch
    prompts = [[(7 * i + j) % 500 + 10 for j in range(args.prompt_tokens)] for i in range(n)]
    rows = {"LoRA off": (off, [0] * n),
            "LoRA on, base requests": (on, [0] * n),
            "one adapter": (on, [first] * n),
            "half base, half one adapter": (on, [first if i % 2 else 0 for i in range(n)]),
            "two adapters and base, a third each": (on, [(0, first, second)[i % 3]
                                                         for i in range(n)])}
    for eng, loras in rows.values():  # warm-up (the traced graph, oneDNN's first calls)
        timed(eng, prompts, loras, 4)
    figures: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, (eng, loras) in rows.items():
            figures[name].append(timed(eng, prompts, loras, args.max_tokens))
    base = statistics.median(figures["LoRA off"])
    load = os.getloadavg()[0]
    print(f"{args.size} Llama, batch {n}, {args.prompt_tokens}-token prompts, "
          f"{args.max_tokens} tokens each, rank {args.rank} on {len(TARGETS)} projections, "
          f"one thread, median of {args.repeats}; load average {load:.2f}")
    print("| requests | output tok/s (min-max) | vs LoRA off |")
    print("|---|---|---|")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.1f} ({min(values):,.1f}-{max(values):,.1f}) | "
              f"{median / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
