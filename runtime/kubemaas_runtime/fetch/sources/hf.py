"""hf://ORG/NAME through huggingface_hub: the revision (branch, tag or commit) is resolved to a
commit with ``model_info(files_metadata=True)``, which also gives each file's size, its LFS sha256
or its git blob id; each file is then streamed by huggingface_hub's ``http_get`` from the pinned
commit's ``resolve/`` URL into our partial file with ``resume_size`` — huggingface_hub's own
``hf_hub_download`` writes to a temporary name unique to each process and deletes it on failure,
so it does not resume a download that a killed pod started.

``HF_TOKEN`` (or the file ``HF_TOKEN_PATH`` names: a mounted Secret) and ``HF_ENDPOINT`` (a
mirror) are read by huggingface_hub itself; ``HF_HUB_DOWNLOAD_TIMEOUT`` is set to the stall
timeout by the supervisor."""

from __future__ import annotations

import threading

from ..errors import (
    ACCESS_DENIED,
    DOWNLOAD_ERROR,
    INVALID_SOURCE,
    NOT_FOUND,
    STALLED,
    FetchError,
)
from ..plan import RemoteFile, safe_rel
from ..transfer import HashingWriter


def hf_error(exc: BaseException, what: str, stall_timeout: float) -> FetchError:
    from huggingface_hub import errors as he

    if isinstance(exc, (he.GatedRepoError,)):
        return FetchError(ACCESS_DENIED, f"{what}: gated repository: {exc}")
    if isinstance(exc, (he.RepositoryNotFoundError, he.RevisionNotFoundError,
                        he.EntryNotFoundError)):
        return FetchError(NOT_FOUND, f"{what}: {str(exc).splitlines()[0]}")
    if isinstance(exc, he.HfHubHTTPError):
        code = exc.response.status_code if exc.response is not None else None
        if code in (401, 403):
            return FetchError(ACCESS_DENIED, f"{what}: HTTP {code} access denied")
        if code == 404:
            return FetchError(NOT_FOUND, f"{what}: HTTP 404 not found")
    name = type(exc).__name__
    if "Timeout" in name:
        return FetchError(STALLED, f"{what}: no data for {stall_timeout:g} s",
                          stallTimeoutSeconds=stall_timeout)
    return FetchError(DOWNLOAD_ERROR, f"{what}: {name}: {str(exc).splitlines()[0]}")


class HfSource:
    def __init__(self, uri: str, revision: str | None, stall_timeout: float) -> None:
        repo = uri.removeprefix("hf://").strip("/")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise FetchError(INVALID_SOURCE, f"invalid Hugging Face URI {uri!r}: expected "
                             "hf://ORG/NAME")
        self.uri = uri
        self.repo = repo
        self.revision = revision or "main"
        self.timeout = stall_timeout
        self.commit: str | None = None
        from huggingface_hub import constants

        # http_get hands over bytes in chunks of this size (10 MiB by default): smaller chunks
        # put the bytes that arrived into the partial file sooner, so a kill or a stall loses at
        # most 1 MiB and the progress the supervisor reads from the disk moves smoothly
        constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, 1 << 20)

    def plan(self) -> tuple[str | None, tuple[RemoteFile, ...]]:
        from huggingface_hub import HfApi, hf_hub_url

        what = f"model info of {self.repo}@{self.revision}"
        try:
            info = HfApi().model_info(self.repo, revision=self.revision, files_metadata=True,
                                      timeout=self.timeout)
        except Exception as exc:
            raise hf_error(exc, what, self.timeout) from None
        self.commit = info.sha or self.revision
        files = []
        for sib in info.siblings or []:
            if sib.rfilename.startswith(".") or "/." in sib.rfilename:
                continue  # .gitattributes and friends
            lfs = sib.lfs
            files.append(RemoteFile(
                path=safe_rel(sib.rfilename, self.uri),
                size=lfs.size if lfs else sib.size,
                sha256=lfs.sha256 if lfs else None,
                git_sha1=None if lfs else sib.blob_id,
                locator=hf_hub_url(self.repo, sib.rfilename, revision=self.commit)))
        if not files:
            raise FetchError(NOT_FOUND, f"{what}: the repository has no files")
        return self.commit, tuple(files)

    def download(self, spec: RemoteFile, out: HashingWriter, offset: int,
                 cancel: threading.Event) -> str | None:
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils._headers import build_hf_headers

        try:
            http_get(spec.locator, out, resume_size=offset,  # type: ignore[arg-type]
                     headers=build_hf_headers(), expected_size=spec.size,
                     displayed_filename=spec.path)
        except (FetchError, OSError) as exc:
            if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
                raise FetchError(DOWNLOAD_ERROR, f"{spec.path}: {exc}") from None
            if isinstance(exc, FetchError) or (exc.errno or 0) > 0:
                raise
            raise hf_error(exc, f"GET {spec.locator}", self.timeout) from None
        except Exception as exc:
            raise hf_error(exc, f"GET {spec.locator}", self.timeout) from None
        return None
