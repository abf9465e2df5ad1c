"""The in-process limit: the model's own batched forward with a KV cache, no server at all.

    taskset -c 0 .venv/bin/python bench/llm/limit.py --model DIR --prompts prompts.json \\
        --batches 1,4,16,32 --max-tokens 32 --out limit.json

Same model files, same prompts (the chat template applied by the tokenizer, as the servers do),
one torch thread (the servers get one core each). Measured:

* **prefill**: one prompt's forward with an empty cache plus the first token's argmax, median of
  ``--repeats`` runs: what TTFT at concurrency 1 would be with zero serving overhead;
* **batched greedy decode** at batch B: B prompts of the same length prefilled together, then
  ``max_tokens - 1`` decode steps (each one forward of B tokens with the cache, argmax), the
  best of two whole runs (three up to batch 4), the first one's decode rate kept beside it;
  decode tokens/s = B * steps / decode time (the limit for output tokens/s once the batch is
  running), and end-to-end tokens/s = B * max_tokens / (prefill + decode time) (the limit when
  every request's prefill is counted, as a server under a closed loop must);
* decode tokens per CPU-second (process CPU time over the decode steps): what the limit would
  be with the core to itself, comparable with the servers' tokens per CPU-second on a shared
  machine;
* ``--make N``: N prompts of exactly ``--prompt-tokens`` tokens once templated (words of the
  tokenizer's training corpus drawn at random, fixed seed), so that a batch needs no padding;
* ``--screen``: which prompts reach ``max_tokens`` without an end-of-sequence token under greedy
  decoding (the harness keeps those, so every server generates the same number of tokens).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

POSITION_BUCKET = 64  # answer tokens per figure of a step time by position


def _load(model_dir: Path, threads: int, device: str = "cpu", dtype: str = "float32"
          ) -> tuple[Any, Any]:
    import torch
    import transformers

    torch.set_num_threads(threads)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir),
                                                              dtype=getattr(torch, dtype))
    model.to(device)
    model.eval()
    return tok, model


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def encode(tok: Any, prompts: list[str]) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        out.append([int(i) for i in ids])
    return out


def greedy(model: Any, ids: list[list[int]], steps: int, step_ends: list[float] | None = None
           ) -> tuple[float, float, list[list[int]], float]:
    """Prefill the batch, then ``steps`` decode steps; (prefill_s, decode_s, new tokens,
    decode CPU seconds of this process). ``step_ends`` (CPU only: a CUDA step's clock would
    need a synchronize that slows it) gets the prefill's and every step's end time."""
    import torch
    from transformers import DynamicCache

    x = torch.tensor(ids, device=model.device)
    with torch.inference_mode():
        cache = DynamicCache()
        _sync(x.device)
        t0 = time.perf_counter()
        out = model(input_ids=x, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
        _sync(x.device)
        t1 = time.perf_counter()
        c1 = time.process_time()
        new = [nxt]
        pos = x.shape[1]
        clock = step_ends if step_ends is not None and x.device.type == "cpu" else None
        if clock is not None:
            clock.append(t1)
        for _ in range(steps):
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True,
                        cache_position=torch.tensor([pos], device=x.device))
            nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
            new.append(nxt)
            pos += 1
            if clock is not None:
                clock.append(time.perf_counter())
        _sync(x.device)
        t2 = time.perf_counter()
        c2 = time.process_time()
    tokens = torch.cat(new, dim=1).tolist()
    return t1 - t0, t2 - t1, tokens, c2 - c1


def screen(model: Any, ids: list[list[int]], eos: int, max_tokens: int,
           batch: int) -> tuple[list[bool], list[list[int]]]:
    """True for each prompt whose greedy answer has no EOS in its first max_tokens tokens, and
    the greedy answers (to compare the servers' texts with)."""
    keep: list[bool] = []
    answers: list[list[int]] = []
    for i in range(0, len(ids), batch):
        group = ids[i:i + batch]
        if len({len(g) for g in group}) != 1:
            raise ValueError("screen needs prompts of one token length")
        _, _, toks, _ = greedy(model, group, max_tokens - 1)
        keep += [eos not in row for row in toks]
        answers += toks
    return keep, answers


def step_ms_by_position(step_ends: list[float], bucket: int = POSITION_BUCKET
                        ) -> dict[str, Any]:
    """The decode steps' mean time per ``bucket`` answer tokens (the answer's token k is made by
    step k, k >= 1), so a long answer shows how a step slows as the context grows ({} without
    step times)."""
    steps = [b - a for a, b in itertools.pairwise(step_ends)]
    if not steps:
        return {}
    means = [sum(chunk) / len(chunk) * 1000
             for chunk in (steps[i:i + bucket] for i in range(0, len(steps), bucket))]
    return {"position_bucket": bucket, "step_ms_by_position": [round(m, 3) for m in means]}


def measure_batch(model: Any, group: list[list[int]], max_tokens: int) -> dict[str, Any]:
    """Batched greedy decode of ``group``: the best of two or three whole runs (the first at a
    batch size runs cold: on one H200 its decode steps took 3-5x as long as the next run's, for
    the whole run; on CPU its prefill 2.5x), the first kept as "first_decode_tok_s"."""
    b, steps = len(group), max_tokens - 1
    clocks: list[list[float]] = [[] for _ in range(3 if b <= 4 else 2)]
    runs = [greedy(model, group, steps, clock) for clock in clocks]
    best = min(range(len(runs)), key=lambda i: runs[i][0] + runs[i][1])
    p, d, _, cpu = runs[best]
    return {
        "batch": b, "prefill_ms": round(p * 1000, 2), "decode_ms": round(d * 1000, 2),
        "first_decode_tok_s": round(b * steps / runs[0][1], 2),
        "step_ms": round(d / steps * 1000, 3),
        "decode_tok_s": round(b * steps / d, 2),
        "decode_tok_per_cpu_s": round(b * steps / cpu, 2) if cpu > 0 else None,
        "e2e_tok_s": round(b * max_tokens / (p + d), 2),
        **step_ms_by_position(clocks[best]),
    }


def make_prompts(tok: Any, corpus: str, n: int, prompt_tokens: int, seed: int = 0) -> list[str]:
    """``n`` distinct prompts whose chat-templated encoding is exactly ``prompt_tokens`` long:
    words of the corpus drawn at random (fixed seed), so the count is not bounded by the
    corpus's length (its runs of words gave only ~700) and no two prompts share a first KV
    block (a prefix cache hit between prompts would flatter the servers that have one)."""
    import random

    rng = random.Random(seed)
    words = corpus.split()
    overhead = len(encode(tok, [""])[0])
    want = prompt_tokens - overhead
    if want < 1:
        raise ValueError(f"--prompt-tokens must exceed the template's {overhead} tokens")
    out: list[str] = []
    seen = set()
    for _ in range(n * 50):
        text = " ".join(rng.choices(words, k=want * 2))
        ids = tok.encode(text, add_special_tokens=False)[:want]
        cand = tok.decode(ids).strip()
        if cand in seen or len(encode(tok, [cand])[0]) != prompt_tokens:
            continue
        seen.add(cand)
        out.append(cand)
        if len(out) == n:
            return out
    raise RuntimeError(f"could only make {len(out)} prompts of {prompt_tokens} tokens")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--batches", default="1,4,16,32")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--screen", action="store_true")
    ap.add_argument("--screen-batch", type=int, default=32, help="prompts a --screen batch holds")
    ap.add_argument("--make", type=int, default=0, help="write N prompts to --prompts and exit")
    ap.add_argument("--prompt-tokens", type=int, default=40)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.make:
        import transformers

        from kubemaas_testbed.llm_models import corpus_text

        tok = transformers.AutoTokenizer.from_pretrained(str(a.model))
        made = make_prompts(tok, corpus_text(), a.make, a.prompt_tokens)
        a.prompts.write_text(json.dumps(made, indent=0))
        a.out.write_text(json.dumps({"made": len(made), "prompt_tokens": a.prompt_tokens}))
        return 0
    tok, model = _load(a.model, a.threads, a.device, a.dtype)
    prompts = json.loads(a.prompts.read_text())
    ids = encode(tok, prompts)
    doc: dict[str, Any] = {"model": str(a.model), "threads": a.threads, "device": a.device,
                           "dtype": a.dtype,
                           "prompt_tokens": sorted({len(i) for i in ids}),
                           "max_tokens": a.max_tokens}
    if a.screen:
        doc["keep"], doc["texts"] = screen(model, ids, int(tok.eos_token_id), a.max_tokens,
                                              a.screen_batch)
        doc["texts"] = [tok.decode(t, skip_special_tokens=True) for t in doc["texts"]]
        a.out.write_text(json.dumps(doc, indent=1))
        return 0
    greedy(model, ids[:1], 2)  # warm-up (allocator, first-call paths)
    prefill = [greedy(model, ids[i % len(ids):i % len(ids) + 1], 0)[0] for i in range(a.repeats)]
    doc["prefill_ms"] = round(statistics.median(prefill) * 1000, 3)
    doc["prefill_min_ms"] = round(min(prefill) * 1000, 3)
    doc["batches"] = []
    for b in (int(x) for x in a.batches.split(",")):
        doc["batches"].append(measure_batch(model, (ids * (b // len(ids) + 1))[:b],
                                            a.max_tokens))
        print(json.dumps(doc["batches"][-1]), flush=True)
    a.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
