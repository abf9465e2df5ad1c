"""CLI of the optimization step: see the package docstring."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import StartupError
from ..storage import S3Config
from . import Options, cached, run_entry
from . import __doc__ as DOC
from .measure import Guard

TERMINATION_LOG = "/dev/termination-log"
MESSAGE_LIMIT = 4096  # what the kubelet keeps of a termination message


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _float(name: str) -> float | None:
    raw = _env(name)
    return float(raw) if raw is not None else None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kubemaas_runtime.optimize",
                                description=(DOC or "").split("\n\n")[0])
    p.add_argument("--model-uri", default=_env("KUBEMAAS_MODEL_URI"))
    p.add_argument("--format", default=_env("KUBEMAAS_MODEL_FORMAT"))
    p.add_argument("--model-sha256", default=_env("KUBEMAAS_MODEL_SHA256"))
    p.add_argument("--out", default=_env("KUBEMAAS_OPTIMIZE_DIR"))
    p.add_argument("--quantize", default=_env("KUBEMAAS_OPTIMIZE_QUANTIZE"),
                   help="int8-dynamic | int8-static | fp16 | int8-weight-only | bf16")
    p.add_argument("--convert", default=_env("KUBEMAAS_OPTIMIZE_CONVERT"), help="onnx")
    p.add_argument("--max-abs-error", type=float, default=_float("KUBEMAAS_OPTIMIZE_MAX_ABS_ERROR"))
    p.add_argument("--max-rel-error", type=float, default=_float("KUBEMAAS_OPTIMIZE_MAX_REL_ERROR"))
    p.add_argument("--min-top1-agreement", type=float,
                   default=_float("KUBEMAAS_OPTIMIZE_MIN_TOP1_AGREEMENT"))
    p.add_argument("--min-token-agreement", type=float,
                   default=_float("KUBEMAAS_OPTIMIZE_MIN_TOKEN_AGREEMENT"),
                   help="hf models: the smallest fraction of greedy probe tokens the optimized "
                        "model must choose as the original does (default 0.9)")
    p.add_argument("--probe-rows", type=int, default=int(_env("KUBEMAAS_OPTIMIZE_PROBE_ROWS")
                                                         or 64))
    p.add_argument("--max-batch-size", type=int, default=int(_env("KUBEMAAS_MAX_BATCH_SIZE")
                                                             or 8))
    p.add_argument("--probe-uri", default=_env("KUBEMAAS_OPTIMIZE_PROBE_URI"),
                   help="a probe file (.npz, one array per input) to calibrate and measure on "
                        "instead of generated rows; fetched like the model")
    p.add_argument("--probe-sha256", default=_env("KUBEMAAS_OPTIMIZE_PROBE_SHA256"))
    p.add_argument("--repeats", type=int, default=int(_env("KUBEMAAS_OPTIMIZE_REPEATS") or 10),
                   help="timed calls per latency figure (median)")
    p.add_argument("--device", default=_env("KUBEMAAS_DEVICE") or "cpu",
                   help="where to measure: cpu | cuda | auto")
    p.add_argument("--s3-endpoint", default=_env("KUBEMAAS_S3_ENDPOINT"))
    p.add_argument("--s3-credentials-dir", default=_env("KUBEMAAS_S3_CREDENTIALS_DIR"))
    p.add_argument("--publish", action="store_true",
                   default=(_env("KUBEMAAS_OPTIMIZE_PUBLISH") or "") in ("1", "true"),
                   help="the model is a ModelCache's directory (file://) and --out is inside it: "
                        "key on the cache's manifest and write result.json for the model pods "
                        "(optimize/cached.py)")
    p.add_argument("--from-cache", default=_env("KUBEMAAS_OPTIMIZE_FROM_CACHE"),
                   help="a ModelCache's optimized directory for these options (read-only): serve "
                        "its result when it is of the cache's present download, else optimize "
                        "here")
    p.add_argument("--termination-message-path", default=_env("KUBEMAAS_TERMINATION_MESSAGE_PATH")
                   or TERMINATION_LOG)
    return p


def compact(report: dict[str, object]) -> str:
    """The report as one JSON line that fits a termination message."""
    text = json.dumps(report, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) > MESSAGE_LIMIT:
        slim = {k: v for k, v in report.items() if k not in ("errors", "latencyMs")}
        slim["truncated"] = True
        text = json.dumps(slim, sort_keys=True, separators=(",", ":"))
    return text


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if not args.model_uri or not args.out:
            raise StartupError("--model-uri (KUBEMAAS_MODEL_URI) and --out "
                               "(KUBEMAAS_OPTIMIZE_DIR) are required")
        for name in ("max_abs_error", "max_rel_error"):
            if getattr(args, name) is not None and getattr(args, name) < 0:
                raise StartupError(f"--{name.replace('_', '-')} must be 0 or more")
        for name in ("min_top1_agreement", "min_token_agreement"):
            if getattr(args, name) is not None and not 0 <= getattr(args, name) <= 1:
                raise StartupError(f"--{name.replace('_', '-')} must be 0..1")
        opts = Options(quantize=args.quantize, convert=args.convert,
                       guard=Guard(args.max_abs_error, args.max_rel_error,
                                   args.min_top1_agreement, args.min_token_agreement),
                       probe_rows=args.probe_rows, max_batch_size=args.max_batch_size,
                       repeats=max(1, args.repeats), probe_uri=args.probe_uri,
                       probe_sha256=(args.probe_sha256.strip().lower() if args.probe_sha256
                                     else None))
        report = _cached(args) if args.from_cache else None
        if report is None:
            report = _optimize(args, opts)
    except (StartupError, ValueError) as exc:
        print(f"optimize: error: {exc}", file=sys.stderr)
        _write(args.termination_message_path, f"optimize: error: {exc}"[:MESSAGE_LIMIT])
        return 1
    line = compact(report)
    print(line, flush=True)
    _write(args.termination_message_path, line)
    return 0


def _local_dir(uri: str) -> Path:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("", "file"):
        raise StartupError(f"a model cache is a local directory (file://), not {uri}")
    return Path(urllib.parse.unquote(parsed.path))


def _cached(args: argparse.Namespace) -> dict[str, Any] | None:
    """The model cache's result (``--from-cache``), or None (then this pod optimizes)."""
    found = cached.from_cache(Path(args.from_cache), _local_dir(args.model_uri), args.format,
                              Path(args.out))
    if isinstance(found, str):
        print(f"optimize: not using the model cache: {found}; optimizing here", file=sys.stderr,
              flush=True)
        return None
    print(f"optimize: the model cache holds the optimized model for these options "
          f"({args.from_cache}, serving the {found.get('serving')} model): not optimizing",
          file=sys.stderr, flush=True)
    return found


def _optimize(args: argparse.Namespace, opts: Options) -> dict[str, Any]:
    s3 = S3Config.from_env(os.environ, args.s3_endpoint, args.s3_credentials_dir)
    sha = args.model_sha256.strip().lower() if args.model_sha256 else None
    if args.publish:  # keyed on the cache's manifest: the model pods check the same digest
        digest = cached.content_digest(_local_dir(args.model_uri), args.format)
        report, entry = run_entry(args.model_uri, Path(args.out), opts, fmt=args.format,
                                  sha256=digest, s3=s3, device=args.device)
        cached.publish(Path(args.out), digest, entry, report)
        return report
    return run_entry(args.model_uri, Path(args.out), opts, fmt=args.format, sha256=sha, s3=s3,
                     device=args.device)[0]


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(text)
    except OSError as exc:  # outside a pod there may be no termination log: stdout has it
        print(f"optimize: cannot write {path}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
