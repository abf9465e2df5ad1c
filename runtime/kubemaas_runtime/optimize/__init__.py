"""Optimize a model before it serves (``spec.model.optimize``): quantize and/or convert, measure
the result against the original, and serve the original when the accuracy guard fails.

``python -m kubemaas_runtime.optimize --model-uri URI --out DIR
[--quantize int8-dynamic|int8-static|fp16] [--convert onnx]
[--max-abs-error X] [--max-rel-error X] [--min-top1-agreement X]
[--probe-uri URI [--probe-sha256 HEX]] [--publish | --from-cache DIR]``

Runs before the runtime (the operator starts it as the pod's init container, from the runtime
image). It fetches the model like the runtime does, and once per (model sha256, options) — in
``DIR/by-key/<key>/``, under a file lock so that replicas sharing the directory do it once —
writes the model to serve and a report. It then places the chosen file in ``DIR/serve/`` (the
runtime serves that directory) and prints the report as one JSON line, also written to the
termination message path (``/dev/termination-log``), where the operator reads it into the
ModelDeployment's ``status.optimization``. Every failure to optimize is reported and the
original is served; only a model that cannot be fetched at all stops it (exit status 1).

On a ModelCache (cached.py): ``--publish`` optimizes the cache's directory once per option set
into ``<cache>/.kubemaas-optimized/<key>/`` and writes ``result.json`` there; ``--from-cache
DIR`` (a model pod, the cache read-only) serves that result without optimizing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import TensorSpec
from ..errors import StartupError
from ..llm.quantized import MARKER
from ..settings import guess_format
from ..storage import S3Config, fetch_model, sha256_file
from . import llm_quant, measure, probe, torch_quant, transform
from .measure import Guard

log = logging.getLogger("kubemaas.runtime.optimize")

REPORT_VERSION = 1


@dataclass(frozen=True)
class Options:
    quantize: str | None = None
    convert: str | None = None
    guard: Guard = field(default_factory=Guard)
    probe_rows: int = 64
    max_batch_size: int = 8
    repeats: int = 10
    probe_uri: str | None = None  # a probe file (probe.py) instead of generated rows
    probe_sha256: str | None = None

    def key(self, sha256: str, probe_sha256: str | None = None) -> str:
        doc = json.dumps({"sha256": sha256, "quantize": self.quantize, "convert": self.convert,
                          "guard": asdict(self.guard), "probeRows": self.probe_rows,
                          "maxBatchSize": self.max_batch_size, "probe": probe_sha256,
                          "v": REPORT_VERSION}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ProbeFile:
    path: Path
    sha256: str

    def rows(self, specs: list[TensorSpec]) -> dict[str, Any]:
        return probe.load(self.path, specs)


def _feeds(specs: list[TensorSpec], opts: Options, probe_file: ProbeFile | None,
           seed: int) -> dict[str, Any]:
    """The probe file's rows, else ``probe_rows`` generated rows with ``seed``."""
    if probe_file is not None:
        return probe_file.rows(specs)
    return measure.probe_inputs(specs, opts.probe_rows, seed=seed)


def validate(fmt: str, opts: Options) -> None:
    """Refuse combinations that cannot work (the CRD's CEL rules say the same)."""
    if opts.quantize is None and opts.convert is None:
        raise StartupError("nothing to do: set --quantize and/or --convert")
    known = (*transform.QUANTIZE, *torch_quant.TORCH_QUANTIZE)
    if opts.quantize is not None and opts.quantize not in known:
        raise StartupError(f"--quantize {opts.quantize!r} is not one of {', '.join(known)}")
    if opts.convert is not None and opts.convert not in transform.CONVERT:
        raise StartupError(f"--convert {opts.convert!r} is not one of "
                           f"{', '.join(transform.CONVERT)}")
    if opts.convert == "onnx" and fmt not in ("torchscript", "torch-export"):
        raise StartupError(f"--convert onnx takes a torchscript or torch-export model, not {fmt}")
    tensor_guard = (opts.guard.max_abs_error, opts.guard.max_rel_error,
                    opts.guard.min_top1_agreement) != (None,) * 3
    if fmt == "hf":
        if opts.quantize not in llm_quant.LLM_QUANTIZE or opts.convert is not None:
            raise StartupError(f"an hf model takes --quantize {' or '.join(llm_quant.LLM_QUANTIZE)}"
                               " and no --convert")
        if tensor_guard:
            raise StartupError("an hf model's guard is --min-token-agreement (not --max-abs-error, "
                               "--max-rel-error or --min-top1-agreement)")
    elif opts.guard.min_token_agreement is not None:
        raise StartupError(f"--min-token-agreement is the guard of hf models, not of {fmt}")
    elif opts.quantize in torch_quant.TORCH_QUANTIZE:
        torch_formats = ("torch-export",) if opts.quantize == "int8-weight-only" else (
            "torchscript", "torch-export")
        if opts.convert is not None or fmt not in torch_formats:
            raise StartupError(f"--quantize {opts.quantize} works on {' and '.join(torch_formats)}"
                               f" models without --convert, not on {fmt}"
                               + (" with --convert" if opts.convert else ""))
    elif opts.quantize is not None and fmt != "onnx" and opts.convert != "onnx":
        raise StartupError(f"--quantize {opts.quantize} works on ONNX models; a {fmt} model "
                           "needs --convert onnx as well")
    if not 1 <= opts.probe_rows <= 4096 or not 1 <= opts.max_batch_size <= 4096:
        raise StartupError("--probe-rows and --max-batch-size must be 1..4096")


def _optimize(src: Path, fmt: str, opts: Options, work: Path,
              probe_file: ProbeFile | None = None) -> Path:
    """The optimized file (ONNX, or the model's own torch format), built in ``work``."""
    if opts.quantize in torch_quant.TORCH_QUANTIZE:
        from ..backends import load_model

        original = load_model(src, fmt, device="cpu")
        dest = work / f"{opts.quantize}{src.suffix}"
        if opts.quantize == "bf16":
            torch_quant.to_bf16(src, fmt, original.inputs, dest)
        else:
            torch_quant.int8_weight_only(src, fmt, original.inputs, dest)
        original.close()
        return dest
    current = src
    if opts.convert == "onnx":
        from ..backends import load_model

        original = load_model(src, fmt, device="cpu")
        current = work / "converted.onnx"
        transform.torch_to_onnx(src, fmt, original.inputs, original.outputs, current)
        original.close()
    if opts.quantize == "int8-dynamic":
        dest = work / "int8.onnx"
        transform.quantize_int8_dynamic(current, dest)
        current = dest
    elif opts.quantize == "int8-static":
        from ..backends import load_model

        spec_model = load_model(current, "onnx", device="cpu")
        # calibrated on the probe file when there is one (real data beats random rows; the
        # figures are then measured on the calibration rows: docs/optimize.md), else on rows
        # generated with another seed than the probe rows
        calibration = _feeds(spec_model.inputs, opts, probe_file, transform.CALIBRATION_SEED)
        batch = opts.max_batch_size if spec_model.batchable else 1
        spec_model.close()
        dest = work / "int8-static.onnx"
        transform.quantize_int8_static(current, dest, calibration, batch)
        current = dest
    elif opts.quantize == "fp16":
        dest = work / "fp16.onnx"
        transform.to_fp16(current, dest)
        current = dest
    return current


def _measure(src: Path, fmt: str, cand: Path, opts: Options, device: str,
             probe_file: ProbeFile | None = None) -> dict[str, Any]:
    from ..backends import load_model

    original = load_model(src, fmt, device=device)
    optimized = load_model(cand, guess_format(cand.name) or "onnx", device=device)
    feeds = _feeds(original.inputs, opts, probe_file, measure.SEED)
    batch = opts.max_batch_size if original.batchable and optimized.batchable else 1
    ref = measure.run_all(original, feeds, batch)
    got = measure.run_all(optimized, feeds, batch)
    errs = measure.errors(ref, got)
    latency: dict[str, dict[str, float]] = {}
    for label, model in (("original", original), ("optimized", optimized)):
        latency[label] = {"batch1": measure.latency_ms(model, feeds, 1, opts.repeats)}
        if batch > 1:
            latency[label][f"batch{batch}"] = measure.latency_ms(model, feeds, batch,
                                                                 max(3, opts.repeats // 2))
    original.close()
    optimized.close()
    rows = len(next(iter(feeds.values())))
    source: dict[str, Any] = ({"rows": rows, "seed": measure.SEED} if probe_file is None else
                              {"rows": rows, "file": probe_file.path.name,
                               "sha256": probe_file.sha256})
    return {"errors": errs, "latencyMs": latency, "device": original.device, "probe": source}


def build(src: Path, fmt: str, sha256: str, opts: Options, entry: Path,
          device: str, probe_file: ProbeFile | None = None) -> dict[str, Any]:
    """Optimize, measure and decide; leaves ``entry/model.<ext>`` and returns the report."""
    work = entry / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    report: dict[str, Any] = {"version": REPORT_VERSION, "sha256": sha256,
                              "quantize": opts.quantize, "convert": opts.convert,
                              "guard": opts.guard.effective().as_report()}
    started = time.perf_counter()
    chosen = src
    try:
        cand = _optimize(src, fmt, opts, work, probe_file)
        report.update(_measure(src, fmt, cand, opts, device, probe_file))
        report["sizeBytes"] = {"original": src.stat().st_size, "optimized": cand.stat().st_size}
        if measure.decide(report, measure.check(opts.guard, report["errors"])):
            chosen = cand
    except StartupError as exc:
        report.update(serving="original", reason=f"optimization failed: {exc}")
    report["seconds"] = round(time.perf_counter() - started, 2)
    served = entry / f"model{chosen.suffix}"
    tmp = entry / f".{served.name}.partial"
    shutil.copyfile(chosen, tmp)
    os.replace(tmp, served)
    report["servedFile"] = served.name
    if not report["reason"].startswith("optimization failed"):  # a failure may be transient
        (entry / "report.json").write_text(json.dumps(report, sort_keys=True))
    shutil.rmtree(work, ignore_errors=True)
    return report


def _build_hf(src: Path, digest: str, opts: Options, entry: Path, device: str,
              probe_file: ProbeFile | None) -> dict[str, Any]:
    assert opts.quantize is not None  # validate() saw to it
    report: dict[str, Any] = {"version": REPORT_VERSION, "sha256": digest,
                              "quantize": opts.quantize, "convert": None}
    report = llm_quant.build(src, report, opts.quantize, opts.guard.min_token_agreement, entry,
                             device, probe_file.path if probe_file else None)
    if not report["reason"].startswith("optimization failed"):  # a failure may be transient
        (entry / "report.json").write_text(json.dumps(report, sort_keys=True))
    return report


def run(uri: str, out: Path, opts: Options, *, fmt: str | None = None, sha256: str | None = None,
        s3: S3Config | None = None, timeout_s: float = 300.0,
        device: str = "cpu") -> dict[str, Any]:
    """Fetch, optimize once per (sha256, options) under a lock, place ``out/serve/``."""
    return run_entry(uri, out, opts, fmt=fmt, sha256=sha256, s3=s3, timeout_s=timeout_s,
                     device=device)[0]


def run_entry(uri: str, out: Path, opts: Options, *, fmt: str | None = None,
              sha256: str | None = None, s3: S3Config | None = None, timeout_s: float = 300.0,
              device: str = "cpu") -> tuple[dict[str, Any], Path]:
    """``run``, and the cache entry (``out/by-key/<key>``) that holds the served file."""
    if (fmt or guess_format(uri)) == "hf":  # a model directory (llm_quant.py)
        from ..storage_dir import fetch_model_dir
        from ..tfconvert import tree_digest

        fmt = "hf"
        src = fetch_model_dir(uri, str(out / "download"), s3=s3, timeout_s=timeout_s)
        digest = sha256 or tree_digest(src)
    else:
        src = fetch_model(uri, str(out / "download"), sha256=sha256, s3=s3, timeout_s=timeout_s)
        fmt = fmt or guess_format(src.name)
        if fmt is None:
            raise StartupError(f"cannot tell the format of {src.name}; set --format")
        digest = sha256 or sha256_file(src)
    validate(fmt, opts)
    probe_file = None
    if opts.probe_uri is not None:  # fetched like the model: same schemes, credentials, checks
        path = fetch_model(opts.probe_uri, str(out / "probe"), sha256=opts.probe_sha256, s3=s3,
                           timeout_s=timeout_s)
        probe_file = ProbeFile(path, opts.probe_sha256 or sha256_file(path))
    entry = out / "by-key" / opts.key(digest, probe_file.sha256 if probe_file else None)
    entry.mkdir(parents=True, exist_ok=True)
    with (entry.parent / f"{entry.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second replica waits here, then reads the cache
        done = entry / "report.json"
        if done.is_file():
            report = dict(json.loads(done.read_text()))
            report["cached"] = True
        else:
            report = (build(src, fmt, digest, opts, entry, device, probe_file) if fmt != "hf"
                      else _build_hf(src, digest, opts, entry, device, probe_file))
            report["cached"] = False
    serve = out / "serve"
    staging = out / f".serve.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    name = str(report["servedFile"])
    if (entry / name).is_dir():  # an hf model directory: serve/ holds its files
        llm_quant.link_tree(entry / name, staging)
        if (entry / name / MARKER).is_file():
            shutil.copyfile(entry / name / MARKER, staging / MARKER)
    elif _same_fs(entry, staging):
        os.link(entry / name, staging / name)
    else:
        shutil.copyfile(entry / name, staging / name)
    shutil.rmtree(serve, ignore_errors=True)
    os.replace(staging, serve)
    return report, entry


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev
