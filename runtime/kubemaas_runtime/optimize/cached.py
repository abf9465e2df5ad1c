"""The optimize step in a ModelCache: optimize once in the cache, serve the result everywhere.

A ModelCache's directory is filled by ``python -m kubemaas_runtime.fetch``, which writes
``.kubemaas-manifest.json`` last (every file with its size and sha256). For a model on a cache
with ``spec.model.optimize`` the operator runs the optimize step once per copy and option set in
a pod of the cache's own (``--publish``): it optimizes into ``DIR/.kubemaas-optimized/<options
key>/`` exactly as in a pod's cache volume (``by-key/<key>/``, the lock, the report) and then
writes ``result.json`` there: the report, the digest of the cache's contents and where the served
files are. The model pods mount the cache read-only and run the step with ``--from-cache`` that
directory: when ``result.json`` is there and its digest is the cache's present one, they place
``serve/`` as links to the cached files and report the cached figures without optimizing.

The digest of the cache's contents comes from the manifest (no file is read again): for a
directory model (hf) sha256 over "PATH SHA256\\n" of its files sorted by path (tfconvert's
``tree_digest`` of the same files), for a one-file model the file's sha256 — the digests the
optimize step keys its cache on anyway. A cache downloaded again from another source has another
digest, so an older result is never served.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import StartupError
from ..llm.quantized import MARKER
from ..storage import FETCHED, find_model_file

OPTIMIZED_DIR = ".kubemaas-optimized"  # inside the cache's directory; hidden from the loaders
RESULT = "result.json"


def content_digest(model_dir: Path, fmt: str | None) -> str:
    """The digest of a fetched directory's model, from its manifest (StartupError without)."""
    try:
        manifest = json.loads((model_dir / FETCHED).read_text())
        files = {str(f["path"]): str(f["sha256"]) for f in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StartupError(f"{model_dir} is not a finished model cache ({FETCHED}: {exc})") from exc
    if fmt == "hf":
        lines = sorted(f"{path} {sha}\n" for path, sha in files.items())
        return hashlib.sha256("".join(lines).encode()).hexdigest()
    rel = find_model_file(model_dir).relative_to(model_dir).as_posix()
    if rel not in files:
        raise StartupError(f"{rel} is not in {model_dir / FETCHED}")
    return files[rel]


def publish(out: Path, digest: str, entry: Path, report: dict[str, Any]) -> None:
    """Write ``out/result.json`` (atomically): what the model pods read."""
    doc = {"digest": digest, "entry": entry.relative_to(out).as_posix(),
           "report": {k: v for k, v in report.items() if k != "cached"}}
    tmp = out / f".{RESULT}.{os.getpid()}"
    tmp.write_text(json.dumps(doc, sort_keys=True))
    os.replace(tmp, out / RESULT)


def read_result(cached: Path, digest: str) -> tuple[dict[str, Any], Path] | str:
    """(the report, the served file or directory), or why the cache cannot be used."""
    try:
        doc = json.loads((cached / RESULT).read_text())
    except FileNotFoundError:
        return f"no optimized model in the cache yet ({cached / RESULT} does not exist)"
    except (OSError, ValueError) as exc:
        return f"{cached / RESULT} cannot be read: {exc}"
    if not isinstance(doc, dict) or not isinstance(doc.get("report"), dict):
        return f"{cached / RESULT} is not a result"
    if doc.get("digest") != digest:
        return (f"{cached / RESULT} is of another download of the model (digest "
                f"{str(doc.get('digest'))[:12]}…, the cache holds {digest[:12]}…)")
    report: dict[str, Any] = doc["report"]
    served = cached / str(doc.get("entry")) / str(report.get("servedFile"))
    if not served.exists():
        return f"{served} is missing"
    return report, served


def place_links(served: Path, out: Path) -> None:
    """``out/serve/`` holding symbolic links to the cached files (the cache is read-only and on
    another volume: no hard link, no copy); for a model directory the marker of its quantization
    is copied (the loader reads it)."""
    serve, staging = out / "serve", out / f".serve.{os.getpid()}"
    for old in (staging, serve):
        _remove(old)
    staging.mkdir(parents=True)
    if served.is_dir():
        for path in sorted(served.rglob("*")):
            rel = path.relative_to(served)
            if not path.is_file():
                continue
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel.name == MARKER:
                (staging / rel).write_bytes(path.read_bytes())
            else:
                os.symlink(path.resolve(), staging / rel)
    else:
        os.symlink(served.resolve(), staging / served.name)
    os.replace(staging, serve)


def _remove(path: Path) -> None:
    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def from_cache(cached: Path, model_dir: Path, fmt: str | None, out: Path
               ) -> dict[str, Any] | str:
    """The cached report with ``out/serve/`` placed, or why it cannot be used (then the caller
    optimizes here, as without a cache)."""
    try:
        digest = content_digest(model_dir, fmt)
    except StartupError as exc:
        return str(exc)
    found = read_result(cached, digest)
    if isinstance(found, str):
        return found
    report, served = found
    place_links(served, out)
    return {**report, "cached": True, "optimizedIn": "modelCache"}
