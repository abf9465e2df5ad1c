"""Which engine to build the runtime's LLM path on: transformers' continuous-batching manager
(``generate_batch``, paged attention) or kubemaas' own scheduler over the model's forward.

8 requests x 32 new tokens (greedy, eos ignored) on the tiny random-weight Llama of
kubemaas_testbed.llm_models; prints seconds per variant. Run:

    PYTHONPATH=runtime:hack .venv/bin/python bench/llm_engine_choice.py [variant ...]
    THREADS=1 ... (torch intra-op threads; default: torch's own choice)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from kubemaas_testbed.llm_models import build_llm

N, NEW = 8, 32
SENTENCE = "the quick brown fox jumps over the lazy dog and the cat sleeps"


def prompts(tok: object) -> list[list[int]]:
    words = SENTENCE.split()
    return [tok(" ".join(words[: 3 + i]))["input_ids"] for i in range(N)]  # type: ignore[operator]


def hf_generate_batch(model: object, ids: list[list[int]]) -> float:
    cfg = transformers.GenerationConfig(max_new_tokens=NEW, do_sample=False, eos_token_id=-1,
                                        pad_token_id=0)
    t0 = time.perf_counter()
    out = model.generate_batch(ids, generation_config=cfg)  # type: ignore[attr-defined]
    took = time.perf_counter() - t0
    assert len(out) == N
    return took


def hf_generate_each(model: object, ids: list[list[int]]) -> float:
    t0 = time.perf_counter()
    for p in ids:
        model.generate(torch.tensor([p]), max_new_tokens=NEW, min_new_tokens=NEW,  # type: ignore[attr-defined]
                       do_sample=False)
    return time.perf_counter() - t0


def kubemaas_engine(model_dir: Path, ids: list[list[int]]) -> float:
    from kubemaas_runtime.llm.engine import Engine, EngineConfig
    from kubemaas_runtime.llm.loader import load_hf
    from kubemaas_runtime.llm.sampling import SamplingParams

    lm = load_hf(model_dir, device="cpu", dtype="float32")
    engine = Engine(lm, EngineConfig(kv_cache_bytes=64 << 20, max_model_len=512,
                                     max_num_seqs=32))
    params = SamplingParams(max_tokens=NEW, ignore_eos=True)
    engine.generate_sync([ids[0]], params)  # warm
    t0 = time.perf_counter()
    outs = engine.generate_sync(ids, params)
    took = time.perf_counter() - t0
    assert all(len(o) == NEW for o in outs)
    return took


VARIANTS = ("generate-each", "kubemaas", "generate-batch")


def main() -> int:
    which = sys.argv[1:] or list(VARIANTS)
    if which in (["-h"], ["--help"]):
        print(__doc__ + f"\nvariants: {', '.join(VARIANTS)}")
        return 0
    unknown = [name for name in which if name not in VARIANTS]
    if unknown:  # any other name used to run the kubemaas engine under that name
        print(f"llm_engine_choice.py: unknown {', '.join(unknown)}; variants: "
              f"{', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if os.environ.get("THREADS"):
        torch.set_num_threads(int(os.environ["THREADS"]))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_llm(Path(tmp) / "tiny-llama")
        tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
        model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        ids = prompts(tok)
        print(f"load average {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}")
        for name in which:
            with torch.inference_mode():
                if name == "generate-batch":
                    took = hf_generate_batch(model, ids)
                    print(f"{name:16s} first call (includes its set-up): {took:6.2f} s")
                    took = hf_generate_batch(model, ids)
                elif name == "generate-each":
                    took = hf_generate_each(model, ids)
                else:
                    took = kubemaas_engine(model_dir, ids)
            print(f"{name:16s} {N} x {NEW} tokens: {took:6.2f} s  ({N * NEW / took:7.1f} tok/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
