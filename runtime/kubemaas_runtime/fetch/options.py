"""The command line of ``python -m kubemaas_runtime.fetch`` (the operator renders it)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class Options:
    source: str
    dest: str
    revision: str | None = None
    include: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)
    parallel: int = 8
    stall_timeout: float = 60.0
    retries: int = 5
    backoff: float = 2.0
    progress_interval: float = 5.0
    termination_log: str | None = None
    s3_endpoint: str | None = None
    s3_credentials_dir: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Options:
        doc: dict[str, Any] = json.loads(text)
        doc["include"] = tuple(doc.get("include", ()))
        doc["exclude"] = tuple(doc.get("exclude", ()))
        return cls(**doc)


def _positive(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m kubemaas_runtime.fetch",
        description="Fetch a model's files into DIR: parallel, resumable, verified; progress as "
                    "JSON lines on stdout, a final JSON report on stdout and in the "
                    "termination log.")
    p.add_argument("--source", required=True, help="hf://ORG/NAME, s3://bucket/prefix, "
                   "http(s)://host/dir/ (with index.json) or http(s)://host/file")
    p.add_argument("--dest", required=True, metavar="DIR")
    p.add_argument("--revision", help="hf:// only: branch, tag or commit (default main)")
    p.add_argument("--include", action="append", default=[], metavar="GLOB")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    p.add_argument("--parallel", type=_positive(int), default=8, metavar="N")
    p.add_argument("--stall-timeout", type=_positive(float), default=60.0, metavar="SECONDS",
                   help="fail an attempt with reason Stalled when it gains less than 64 KiB "
                        "(and finishes no file) in this long")
    p.add_argument("--retries", type=int, default=5, metavar="N",
                   help="further attempts after a transient failure (Stalled, DownloadError)")
    p.add_argument("--backoff", type=float, default=2.0, metavar="SECONDS",
                   help="first wait before a retry; doubles each time, at most 60 s")
    p.add_argument("--progress-interval", type=_positive(float), default=5.0, metavar="SECONDS")
    p.add_argument("--termination-log", metavar="PATH",
                   help=f"default {TERMINATION_LOG} when it exists")
    p.add_argument("--s3-endpoint", help="default AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL")
    p.add_argument("--s3-credentials-dir", metavar="DIR",
                   help="files AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, … (a mounted Secret)")
    a = p.parse_args(argv)
    if a.retries < 0 or a.backoff < 0:
        p.error("--retries and --backoff must be >= 0")
    term = a.termination_log
    if term is None and os.path.exists(TERMINATION_LOG):
        term = TERMINATION_LOG
    return Options(source=a.source, dest=a.dest, revision=a.revision,
                   include=tuple(a.include), exclude=tuple(a.exclude), parallel=a.parallel,
                   stall_timeout=a.stall_timeout, retries=a.retries, backoff=a.backoff,
                   progress_interval=a.progress_interval, termination_log=term,
                   s3_endpoint=a.s3_endpoint, s3_credentials_dir=a.s3_credentials_dir)
