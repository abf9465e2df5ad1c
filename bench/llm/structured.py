"""What a structured output costs the engine: the same batch decoded free and held to a JSON
schema, in process (no server), alternated so that the machine's drift falls on both.

    taskset -c 0 .venv/bin/python bench/llm/structured.py --model DIR --batch 16 \\
        --tokens 48 --rounds 6

Each round runs ``--batch`` sequences of ``--tokens`` tokens (ignore_eos: every sequence
generates them all) through ``Engine.step`` three ways: free; every sequence held to the
schema below (a grammar that never ends before the budget: an array of records); and the
schema's mask alone, computed and applied to random logits (the grammar's share). Prints
tokens/s of each (median over rounds) and the mask's cost per token. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

SCHEMA = {"type": "array", "items": {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}}},
    "required": ["name", "age", "tags"], "additionalProperties": False}}


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=6)
    return ap.parse_args()


def main() -> int:
    args = _args()

    import torch

    from kubemaas_runtime.llm.engine import Engine, EngineConfig
    from kubemaas_runtime.llm.loader import load_hf
    from kubemaas_runtime.llm.sampling import SamplingParams
    from kubemaas_runtime.llm.structured import Constraint, Grammars, allowed_tokens

    torch.set_num_threads(1)
    lm = load_hf(args.model, device="cpu")
    vocab = lm.model.config.vocab_size
    engine = Engine(lm, EngineConfig(kv_cache_bytes=64 << 20, max_model_len=512,
                                     arrival_window=0))
    grammars = Grammars(lm.tokenizer, vocab, lm.eos_ids)
    constraint = Constraint("json", json.dumps(SCHEMA), "bench")
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    prompt = lm.tokenizer("a list of people:")["input_ids"]

    def decode(held: bool) -> float:
        matchers = grammars.matchers(constraint, args.batch) if held else [None] * args.batch
        seqs = [engine.sequence(list(prompt), params, m) for m in matchers]
        for seq in seqs:
            engine.scheduler.add(seq)
        start = time.perf_counter()
        while engine.scheduler.waiting or engine.scheduler.running:
            engine.step()
        elapsed = time.perf_counter() - start
        assert all(len(s.output) == args.tokens or s.finish_reason == "stop" for s in seqs)
        return sum(len(s.output) for s in seqs) / elapsed

    def masks_alone() -> float:
        """Seconds per token of the mask: computed, unpacked and applied, then the grammar's
        own most likely allowed token consumed, as the engine does."""
        matchers = grammars.matchers(constraint, args.batch)
        logits = torch.randn(args.batch, vocab)
        start = time.perf_counter()
        count = 0
        for _ in range(args.tokens):
            for row, matcher in zip(logits, matchers, strict=True):
                allowed = allowed_tokens(matcher, vocab)
                assert allowed is not None  # a plain matcher always has a mask
                token = int(row.masked_fill(~allowed, float("-inf")).argmax())
                matcher.consume_token(token)
                count += 1
        return (time.perf_counter() - start) / count

    decode(False), decode(True)  # warm up (the first mask builds the grammar's lexer)
    free, held, mask = [], [], []
    for _ in range(args.rounds):
        free.append(decode(False))
        held.append(decode(True))
        mask.append(masks_alone())
    report(args, free, held, mask)
    return 0


def report(args: argparse.Namespace, free: list[float], held: list[float],
           mask: list[float]) -> None:
    f, h, m = (statistics.median(x) for x in (free, held, mask))
    print(f"batch {args.batch}, {args.tokens} tokens each, {args.rounds} rounds (medians)")
    print(f"  free:         {f:8.0f} tok/s   (rounds: {', '.join(f'{x:.0f}' for x in free)})")
    print(f"  JSON schema:  {h:8.0f} tok/s   (rounds: {', '.join(f'{x:.0f}' for x in held)})")
    print(f"  held / free:  {h / f:8.2f}")
    print(f"  mask alone:   {m * 1e6:8.1f} us a token "
          f"(rounds: {', '.join(f'{x * 1e6:.1f}' for x in mask)})")


if __name__ == "__main__":
    sys.exit(main())
