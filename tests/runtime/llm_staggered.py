"""A changing batch for in-process engine tests: sequences of different prompt and answer
lengths, a few added every few steps, so the decode batch grows and shrinks and contexts cross
block boundaries (test_llm_traced_decode.py, test_llm_cuda_graphs.py)."""

from __future__ import annotations

from kubemaas_runtime.llm.engine import Engine
from kubemaas_runtime.llm.loader import LanguageModel
from kubemaas_runtime.llm.sampling import SamplingParams


def run_staggered(engine: Engine, lm: LanguageModel, count: int = 7) -> list[list[int]]:
    """Run ``count`` such greedy sequences to the end in the calling thread; their outputs."""
    seqs = []
    for i in range(count):
        prompt = list(lm.tokenizer(f"request {i}: " + "the cache " * (1 + 3 * i))["input_ids"])
        seq = engine.sequence(prompt, SamplingParams(max_tokens=6 + 5 * i, temperature=0.0,
                                                      ignore_eos=True))
        seqs.append(seq)
        engine.scheduler.add(seq)
        if i % 2:
            for _ in range(4):
                engine.step()
    while engine._has_work():
        engine.step()
    return [seq.output for seq in seqs]
