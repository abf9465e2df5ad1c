"""Measure an optimized model against its original before it serves: probe inputs from the
model's input metadata with a fixed seed, error measures, latency at batch 1 and at the max batch
size, and the accuracy guard."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..backends.base import DATATYPE_TO_NUMPY, Model, TensorSpec
from ..errors import StartupError

SEED = 0
DYNAMIC_DIM = 8  # non-batch dynamic dimensions of probe inputs (a sequence length, an image side)

# the guard when the spec sets none (stated in the CRD's field descriptions)
DEFAULT_MAX_REL_ERROR = 0.05
DEFAULT_MIN_TOP1_AGREEMENT = 0.99


@dataclass(frozen=True)
class Guard:
    """Every bound that is set must hold; with none set the defaults above apply (top-1 only to
    outputs that look like class scores: FP, rank 2, at least 2 classes)."""

    max_abs_error: float | None = None
    max_rel_error: float | None = None
    min_top1_agreement: float | None = None
    min_token_agreement: float | None = None  # hf language models only (llm_quant.py)

    def as_report(self) -> dict[str, float]:
        named = {"maxAbsError": self.max_abs_error, "maxRelError": self.max_rel_error,
                 "minTop1Agreement": self.min_top1_agreement,
                 "minTokenAgreement": self.min_token_agreement}
        return {k: v for k, v in named.items() if v is not None}

    def effective(self) -> Guard:
        if (self.max_abs_error, self.max_rel_error, self.min_top1_agreement,
                self.min_token_agreement) == (None,) * 4:
            return Guard(None, DEFAULT_MAX_REL_ERROR, DEFAULT_MIN_TOP1_AGREEMENT)
        return self


def probe_inputs(specs: list[TensorSpec], rows: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """``rows`` probe rows per input: standard normal floats, small non-negative integers (token
    ids, indices), random booleans; dynamic non-batch dimensions are ``DYNAMIC_DIM``."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.shape is None or spec.datatype == "BYTES":
            raise StartupError(f"input {spec.name!r}: probe inputs need a known shape and a "
                               "numeric datatype")
        shape = (rows, *(DYNAMIC_DIM if d < 0 else d for d in spec.shape[1:]))
        dtype = DATATYPE_TO_NUMPY[spec.datatype]
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        else:
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(dtype)
    return feeds


def _rows(feeds: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v[start:stop]) for k, v in feeds.items()}


def run_all(model: Model, feeds: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The model's outputs on all probe rows, run ``batch`` rows at a time."""
    total = len(next(iter(feeds.values())))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, total, batch):
        for name, value in model.run(_rows(feeds, start, start + batch), None).items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def latency_ms(model: Model, feeds: Mapping[str, np.ndarray], batch: int, repeats: int) -> float:
    """Median wall time of one call on ``batch`` probe rows, after one untimed call."""
    sample = _rows(feeds, 0, batch)
    model.run(sample, None)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.run(sample, None)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 3)


def _is_classifier(ref: np.ndarray) -> bool:
    return ref.dtype.kind == "f" and ref.ndim == 2 and ref.shape[1] >= 2


def errors(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> dict[str, object]:
    """Per output: max absolute error, max relative error (max |a-b| over max |a| of the
    output, so near-zero elements do not blow it up) and, for class scores, top-1 agreement."""
    out: dict[str, object] = {}
    for name, want in ref.items():
        if name not in got:
            raise StartupError(f"the optimized model has no output {name!r}")
        have = got[name]
        if have.shape != want.shape:
            raise StartupError(f"output {name!r}: optimized shape {list(have.shape)} differs "
                               f"from the original's {list(want.shape)}")
        a, b = want.astype(np.float64), have.astype(np.float64)
        abs_err = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        entry: dict[str, float] = {"maxAbsError": abs_err,
                                   "maxRelError": abs_err / scale if scale > 0 else abs_err}
        if _is_classifier(want):
            entry["top1Agreement"] = float(np.mean(np.argmax(a, 1) == np.argmax(b, 1)))
        out[name] = {k: float(f"{v:.6g}") for k, v in entry.items()}
    return out


def check(guard: Guard, errs: Mapping[str, object]) -> list[str]:
    """The guard's violations, one sentence each (empty: the optimized model may serve)."""
    g = guard.effective()
    failed: list[str] = []
    for name, raw in errs.items():
        e = dict(raw)  # type: ignore[call-overload]
        if g.max_abs_error is not None and e["maxAbsError"] > g.max_abs_error:
            failed.append(f"{name}: max abs error {e['maxAbsError']:.4g} > {g.max_abs_error:g}")
        if g.max_rel_error is not None and e["maxRelError"] > g.max_rel_error:
            failed.append(f"{name}: max rel error {e['maxRelError']:.4g} > {g.max_rel_error:g}")
        if (g.min_top1_agreement is not None and "top1Agreement" in e
                and e["top1Agreement"] < g.min_top1_agreement):
            failed.append(f"{name}: top-1 agreement {e['top1Agreement']:.4g} < "
                          f"{g.min_top1_agreement:g}")
    return failed


def decide(report: dict[str, object], failed: list[str]) -> bool:
    """Record which model serves and why; True when the optimized one may."""
    if failed:
        report.update(serving="original", reason="accuracy guard failed: " + "; ".join(failed))
        return False
    report.update(serving="optimized", reason="within the accuracy guard")
    return True
