"""API keys: one file per key in a mounted Secret directory, the file name being the key's name
(what logs and metrics show; the key itself is never logged).

Presented keys are compared in constant time against every loaded key: both sides are hashed with
SHA-256 first (so the comparison does not leak the key's length) and compared with
``hmac.compare_digest``, and the loop never stops early (so it does not leak which key matched).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import StartupError
from .secretdir import ReloadedDir, Signature, entries, read_version, signature

KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MIN_KEY_CHARS = 16
MAX_KEY_BYTES = 4096
_BEARER = "bearer "


class KeyFileError(ValueError):
    pass


@dataclass(frozen=True)
class KeySet:
    """Loaded keys: name -> SHA-256 of the key."""

    digests: Mapping[str, bytes]

    def match(self, presented: str) -> str | None:
        """The name of the key equal to ``presented``, or None; constant time in the keys."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for name, want in self.digests.items():
            if hmac.compare_digest(digest, want) and found is None:
                found = name
        return found


def parse_key(name: str, raw: bytes) -> str:
    """One key file's content -> the key. Surrounding whitespace (a trailing newline from
    ``echo``) is dropped; what is left must be printable ASCII without spaces, 16+ characters."""
    if not KEY_NAME_RE.match(name):
        raise KeyFileError(f"key file name {name!r} must match {KEY_NAME_RE.pattern} "
                           "(it is the key's name in logs and metrics)")
    if len(raw) > MAX_KEY_BYTES:
        raise KeyFileError(f"key file {name!r} is over {MAX_KEY_BYTES} bytes")
    try:
        key = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {name!r} is not ASCII text") from None
    if len(key) < MIN_KEY_CHARS:
        raise KeyFileError(f"key {name!r} is shorter than {MIN_KEY_CHARS} characters")
    if any(not (0x21 <= ord(c) <= 0x7e) for c in key):
        raise KeyFileError(f"key {name!r} holds spaces or control characters")
    return key


def load_keys(directory: Path) -> KeySet:
    """Every key file of the Secret's current version; a bad file or two names for one key
    is an error."""
    return read_version(directory, _load_version)


def _load_version(directory: Path) -> KeySet:
    digests: dict[str, bytes] = {}
    owner: dict[bytes, str] = {}
    for path in entries(directory):
        if path.is_dir():
            continue
        key = parse_key(path.name, path.read_bytes())
        digest = hashlib.sha256(key.encode()).digest()
        if digest in owner:
            raise KeyFileError(f"keys {owner[digest]!r} and {path.name!r} are the same key")
        owner[digest] = path.name
        digests[path.name] = digest
    return KeySet(digests)


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``."""
    if authorization is not None:
        if authorization[:len(_BEARER)].lower() == _BEARER:
            return authorization[len(_BEARER):].strip() or None
        return None
    if x_api_key is not None:
        return x_api_key.strip() or None
    return None


class KeyStore(ReloadedDir):
    """The keys of one directory, reloaded by ``refresh()`` when its files change. A directory
    that turns bad keeps the last good keys (and says so in the log)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        try:
            self._sig = signature(self.directory)
            self.keys = load_keys(self.directory)
        except (OSError, KeyFileError) as exc:
            raise StartupError(f"--api-keys-dir {directory}: {exc}") from None
        if not self.keys.digests:
            raise StartupError(f"--api-keys-dir {directory}: no key files (one file per key, "
                               "the file name is the key's name)")
        self._failed_sig: Signature | None = None
        self.reloads = {"ok": 0, "error": 0}

    def match(self, presented: str) -> str | None:
        return self.keys.match(presented)

    def refresh(self) -> bool:
        """Reload if the files changed; True when new keys were loaded."""
        return self._reload("api keys", "the previous keys", self._load_keys,
                            (OSError, KeyFileError))

    def _load_keys(self) -> dict[str, str]:
        keys = load_keys(self.directory)
        if not keys.digests:
            raise KeyFileError("no key files")
        self.keys = keys
        return {"keys": ",".join(sorted(keys.digests))}
