"""The sources a fetch reads from, chosen by the URI's scheme."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable

from ..errors import INVALID_SOURCE, FetchError
from ..options import Options
from ..transfer import Source


def open_source(opts: Options, beat: Callable[[], None] | None = None) -> Source:
    """``beat``: called as the listing makes progress (an http HEAD answered), so a long plan
    is not taken for a stall before the first byte of a file."""
    scheme = urllib.parse.urlsplit(opts.source).scheme.lower()
    if scheme == "hf":
        from .hf import HfSource
        return HfSource(opts.source, opts.revision, opts.stall_timeout)
    if opts.revision is not None:
        raise FetchError(INVALID_SOURCE, f"--revision applies to hf:// sources only, not "
                         f"{scheme}://")
    if scheme == "s3":
        from .s3 import S3Source, s3_settings
        settings = s3_settings(os.environ, opts.s3_credentials_dir)
        if opts.s3_endpoint:
            settings["AWS_ENDPOINT_URL_S3"] = opts.s3_endpoint
        return S3Source(opts.source, opts.stall_timeout, settings)
    if scheme in ("http", "https"):
        from .http import HttpSource
        return HttpSource(opts.source, opts.stall_timeout, beat)
    raise FetchError(INVALID_SOURCE, f"unsupported source {opts.source!r}: use hf://ORG/NAME, "
                     "s3://bucket/prefix or http(s)://")
