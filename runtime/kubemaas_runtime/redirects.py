"""Which redirects urllib may follow. Its default handler copies every header to the Location's
host and follows http(s) to ftp:// too; the downloaders use these openers instead."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any


class RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """For S3: its SigV4 ``Authorization`` and ``X-Amz-Security-Token`` are signed for the
    endpoint and would reach whatever server the Location names. S3 answers from the endpoint it
    was asked, so a redirect is refused (the 3xx is raised as an HTTPError)."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        return None


class HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """For plain downloads (no credentials): http(s) targets only. urllib also follows ftp://,
    which lets a server make the download pod open connections elsewhere (SSRF)."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to {scheme}:// refused",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


NO_REDIRECTS = urllib.request.build_opener(RefuseRedirects)
HTTP_REDIRECTS = urllib.request.build_opener(HttpOnlyRedirects)
