"""TLS from a mounted ``kubernetes.io/tls`` Secret directory (``tls.crt``, ``tls.key``: what
cert-manager writes), re-read when it changes: ``load_cert_chain`` on the live context, so new
handshakes present the new certificate and established connections keep theirs.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import StartupError
from .secretdir import ReloadedDir, Signature, read_version, signature


class EncryptedKeyError(ValueError):
    pass


def _no_pass_phrase() -> bytes:
    """The pass phrase callback: without one, OpenSSL asks for it on the terminal (a blocking
    read on the event loop) or fails with "[Errno 22] Invalid argument" where there is none."""
    raise EncryptedKeyError("tls.key is encrypted; a kubernetes.io/tls Secret holds an "
                            "unencrypted PEM key (openssl pkey -in KEY -out tls.key)")


class TLSFiles(ReloadedDir):
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])
        self.reloads = {"ok": 0, "error": 0}
        try:
            self._sig: Signature = signature(self.directory)
            self._load()
        except (OSError, ssl.SSLError, EncryptedKeyError) as exc:
            raise StartupError(f"--tls-dir {directory}: cannot load tls.crt and tls.key: "
                               f"{exc}") from None
        self._failed_sig: Signature | None = None

    def _load(self) -> None:
        read_version(self.directory, self._load_pair)  # one version's crt and key, never mixed

    def _load_pair(self, directory: Path) -> None:
        crt, key = directory / "tls.crt", directory / "tls.key"
        # a pair that fails half way must not leave the live context with a new certificate and
        # the old key: try it on a scratch context first
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            crt, key, password=_no_pass_phrase)
        self.context.load_cert_chain(crt, key, password=_no_pass_phrase)

    def refresh(self) -> bool:
        """Re-read the pair if the files changed; True when a new certificate was loaded. A pair
        that does not load (half written, key and certificate not matching) keeps the old one."""
        return self._reload("tls certificate", "the previous one", self._load,
                            (OSError, ssl.SSLError, EncryptedKeyError))
