"""Optimize an ``hf`` language model (``int8-weight-only``, ``bf16``) and guard it by token
agreement (docs/optimize.md).

The optimized directory is the original's files plus ``kubemaas-optimize.json``, which the
runtime's loader applies (llm/quantized.py: why at load). Both models are loaded the way the
runtime loads them (the same loader, dtype ``auto``: float32 on CPU, bfloat16 on CUDA) and run by
the runtime's own engine: greedy continuations (``PROBE_TOKENS`` tokens, EOS ignored so both run
the full length) of the probe prompts — the spec's probe file, a JSON list of strings, else
``DEFAULT_PROMPTS`` — compared position by position. ``tokenAgreement`` is the fraction of
positions where the optimized model chose the original's token; after a first difference the
two continue from different text, so it is a strict measure. The guard is ``minTokenAgreement``
(default ``DEFAULT_MIN_TOKEN_AGREEMENT``). Latency: the wall time of the greedy continuation of
one prompt (batch 1) and of all prompts together (the engine batches them).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import StartupError
from ..llm import quantized
from .measure import decide

DEFAULT_PROMPTS = (
    "The quick brown fox", "Once upon a time", "The capital of France is",
    "def fibonacci(n):", "In the beginning", "The weather today is",
    "1, 2, 3, 4,", "Kubernetes schedules pods onto",
)
PROBE_TOKENS = 16
DEFAULT_MIN_TOKEN_AGREEMENT = 0.9
MAX_PROMPTS = 256
LLM_QUANTIZE = quantized.LLM_QUANTIZE


def prompts_from(path: Path) -> list[str]:
    """The probe file of an ``hf`` model: a JSON list of 1..256 non-empty strings."""
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StartupError(f"probe file {path.name}: not JSON ({exc})") from None
    if (not isinstance(raw, list) or not 1 <= len(raw) <= MAX_PROMPTS
            or not all(isinstance(p, str) and p for p in raw)):
        raise StartupError(f"probe file {path.name}: an hf model's probe file is a JSON list "
                           f"of 1..{MAX_PROMPTS} non-empty prompt strings")
    return list(raw)


def link_tree(src: Path, dest: Path) -> None:
    """``dest`` holding ``src``'s files (hard links on one filesystem, else copies); not the
    ``.kubemaas-*`` entries of a model cache's directory (its manifest, its optimized models)."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if (not path.is_file() or rel.name == quantized.MARKER
                or rel.parts[0].startswith(".kubemaas-")):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)


def _continuations(lm: Any, prompts: list[list[int]], tokens: int
                   ) -> tuple[list[list[int]], dict[str, float]]:
    """Greedy continuations of every prompt, and the latency at batch 1 and batch N."""
    from ..llm.engine import Engine, EngineConfig
    from ..llm.sampling import SamplingParams

    longest = max(len(p) for p in prompts) + tokens
    engine = Engine(lm, EngineConfig(kv_cache_bytes=64 << 20, max_model_len=longest,
                                     max_num_seqs=len(prompts),
                                     max_num_batched_tokens=max(512, longest)))
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    engine.generate_sync(prompts[:1], params)  # untimed: first-call costs
    t0 = time.perf_counter()
    engine.generate_sync(prompts[:1], params)
    t1 = time.perf_counter()
    outs = engine.generate_sync(prompts, params)
    t2 = time.perf_counter()
    latency = {"batch1": round((t1 - t0) * 1000, 3)}
    if len(prompts) > 1:
        latency[f"batch{len(prompts)}"] = round((t2 - t1) * 1000, 3)
    return outs, latency


def agreement(ref: list[list[int]], got: list[list[int]]) -> dict[str, float]:
    """Position-wise token agreement and the fraction of identical continuations."""
    same = total = 0
    for a, b in zip(ref, got, strict=True):
        total += max(len(a), len(b))
        same += sum(x == y for x, y in zip(a, b, strict=False))
    identical = sum(a == b for a, b in zip(ref, got, strict=True)) / len(ref)
    return {"tokenAgreement": float(f"{same / total:.6g}") if total else 1.0,
            "sequencesIdentical": float(f"{identical:.6g}")}


def measure(src: Path, cand: Path, device: str, prompt_texts: list[str],
            tokens: int = PROBE_TOKENS) -> dict[str, Any]:
    """Load both like the runtime does, run the probe prompts, compare."""
    from ..llm.loader import load_hf

    results: dict[str, Any] = {}
    latency: dict[str, dict[str, float]] = {}
    size: dict[str, int] = {}
    for label, path in (("original", src), ("optimized", cand)):
        lm = load_hf(path, device=device)
        prompts = [list(lm.tokenizer(t)["input_ids"]) or [0] for t in prompt_texts]
        results[label], latency[label] = _continuations(lm, prompts, tokens)
        size[label] = quantized.weight_bytes(lm.model)
        dev = str(lm.device)
        del lm
    return {"errors": {"tokens": agreement(results["original"], results["optimized"])},
            "latencyMs": latency, "sizeBytes": size, "sizeOf": "weights in memory",
            "device": dev, "tokens": tokens}


def check(min_token_agreement: float | None, errs: dict[str, Any]) -> list[str]:
    bound = DEFAULT_MIN_TOKEN_AGREEMENT if min_token_agreement is None else min_token_agreement
    got = errs["tokens"]["tokenAgreement"]
    return [f"token agreement {got:.4g} < {bound:g}"] if got < bound else []


def build(src: Path, report: dict[str, Any], quantize: str, min_token_agreement: float | None,
          entry: Path, device: str, probe_file: Path | None) -> dict[str, Any]:
    """Optimize, measure and decide; leaves ``entry/model/`` (a model directory) and returns
    the report (``report`` holds what the caller knows already)."""
    work = entry / "work"
    shutil.rmtree(work, ignore_errors=True)
    cand = work / "model"
    cand.mkdir(parents=True)
    link_tree(src, cand)
    quantized.write_marker(cand, quantize)
    bound = DEFAULT_MIN_TOKEN_AGREEMENT if min_token_agreement is None else min_token_agreement
    report["guard"] = {"minTokenAgreement": bound}
    chosen = src
    started = time.perf_counter()
    try:
        prompts = prompts_from(probe_file) if probe_file is not None else list(DEFAULT_PROMPTS)
        report["probe"] = ({"prompts": len(prompts), "file": probe_file.name}
                           if probe_file is not None else {"prompts": len(prompts)})
        try:
            report.update(measure(src, cand, device, prompts))
        except StartupError:
            raise
        except Exception as exc:  # a quantizer or kernel that does not take this model
            lines = str(exc).strip().splitlines()
            raise StartupError(f"{quantize} of the hf model failed: "
                               f"{lines[0][:300] if lines else type(exc).__name__}") from None
        if decide(report, check(bound, report["errors"])):
            chosen = cand
    except StartupError as exc:
        report.update(serving="original", reason=f"optimization failed: {exc}")
    report["seconds"] = round(time.perf_counter() - started, 2)
    served, tmp = entry / "model", entry / ".model.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    link_tree(chosen, tmp)
    if chosen == cand:
        quantized.write_marker(tmp, quantize)
    shutil.rmtree(served, ignore_errors=True)
    os.replace(tmp, served)
    report["servedFile"] = served.name
    shutil.rmtree(work, ignore_errors=True)
    return report
