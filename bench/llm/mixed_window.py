"""Prefill and decode of a model whose layers mix a sliding window and full attention.

    PYTHONPATH=runtime:hack taskset -c 0 .venv/bin/python bench/llm/mixed_window.py \\
        --prompt 8192 --window 1024 --rows 4

A Gemma 3 text model, or with ``--family qwen2`` a Qwen2 (both on the direct stack: their
decode steps traced unless ``--traced-decode false``), with random weights (five of six layers
windowed, one KV head; hidden 512, 6 layers, head_dim 128), the engine in process on CPU
with one torch thread: one prompt of ``--prompt`` tokens read in chunks of ``--chunk``, then
``--rows - 1`` more that share all but its last token from the prefix cache, and ``--steps``
decode steps of the ``--rows`` rows at that context. Prints one JSON line: the first prompt's
prefill time per token, the median decode step time, the traced graphs' replays, the decode
lanes' bytes and the load average. Which code it measures is the
``kubemaas_runtime`` on ``PYTHONPATH`` (run it against two checkouts to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build(root: Path, family: str, window: int, positions: int) -> Path:
    """The tokenizer of the tiny model of ``family`` with a larger random-weight model beside
    it: five of its six layers windowed (Gemma 3's every sixth full; Qwen2's first full,
    ``max_window_layers`` 1)."""
    import transformers

    from kubemaas_testbed.llm_models import build_llm

    model_dir = build_llm(root / family, family=family)
    cfg = transformers.AutoConfig.from_pretrained(str(model_dir))
    layers = 6
    cfg.update({"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 4,
                "num_key_value_heads": 1, "head_dim": 128, "num_hidden_layers": layers,
                "sliding_window": window, "max_position_embeddings": positions})
    if family == "qwen2":
        cfg.update({"use_sliding_window": True, "max_window_layers": 1,
                    "layer_types": ["full_attention"] + ["sliding_attention"] * (layers - 1)})
    else:
        cfg.update({"layer_types": ["full_attention" if (i + 1) % 6 == 0
                                    else "sliding_attention" for i in range(layers)]})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.save_pretrained(str(model_dir))
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", type=int, default=8192)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--family", choices=("gemma3_text", "qwen2"), default="gemma3_text")
    parser.add_argument("--traced-decode", choices=("true", "false"), default="true",
                        help="both families are on the direct stack: their decode steps may be "
                             "traced")
    parser.add_argument("--kv-layout", choices=("one-pool", "split", "shared"),
                        default="one-pool", help="one pool of every layer's blocks, or two KV "
                        "groups (--hybrid-kv-cache): the fixed split or one pool of pages")
    args = parser.parse_args()
    from kubemaas_runtime.llm.engine import Engine, EngineConfig
    from kubemaas_runtime.llm.loader import load_hf
    from kubemaas_runtime.llm.sampling import SamplingParams

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        lm = load_hf(build(Path(tmp), args.family, args.window, 2 * args.prompt),
                     device="cpu")
    assert lm.sliding and lm.window == args.window
    engine = Engine(lm, EngineConfig(kv_cache_bytes=1 << 30, max_model_len=2 * args.prompt,
                                     max_num_seqs=args.rows,
                                     max_num_batched_tokens=args.chunk, prefill_share=0.0,
                                     traced_decode=args.traced_decode == "true",
                                     kv_groups=args.kv_layout != "one-pool",
                                     kv_shared=args.kv_layout == "shared"))
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(5, 1000, (args.prompt,), generator=gen).tolist()
    params = SamplingParams(max_tokens=args.steps + 8, temperature=0.0, ignore_eos=True)
    first = engine.sequence(prompt, params)
    engine.scheduler.add(first)
    t0 = time.perf_counter()
    while first.computed < len(prompt):
        engine.step()
    prefill = time.perf_counter() - t0
    for i in range(1, args.rows):  # the same prompt but its last token: a prefix-cache hit
        engine.scheduler.add(engine.sequence([*prompt[:-1], 5 + i], params))
    while any(s.computed < len(s.ids) - 1 for s in engine.scheduler.running) or \
            engine.scheduler.waiting:
        engine.step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    traced = engine.traced
    print(json.dumps({"family": args.family, "kv_layout": args.kv_layout,
                      "prompt": args.prompt, "window": args.window,
                      "rows": args.rows, "traced_replays": traced and traced.replays,
                      "prefill_us_per_token": round(prefill / args.prompt * 1e6, 1),
                      "decode_step_ms": round(statistics.median(times) * 1e3, 2),
                      "running": len(engine.scheduler.running),
                      "lanes_mib": round(engine.lanes_bytes / (1 << 20), 1),
                      "loadavg": os.getloadavg()}))


if __name__ == "__main__":
    main()
