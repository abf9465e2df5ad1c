"""The runtime's optimize/cached.py pure parts: the digest of a fetched cache from its manifest
(the digests the optimize step keys on: a one-file model's sha256, a directory's tree digest),
and a result that is of another download or incomplete is refused with the reason."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.optimize import cached
from kubemaas_runtime.tfconvert import tree_digest


def _fetched(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / ".kubemaas-manifest.json").write_text(json.dumps({"files": [
        {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for rel, data in files.items()]}))
    return root


def test_digest_from_the_manifest(tmp_path: Path) -> None:
    one = _fetched(tmp_path / "one", {"model.onnx": b"onnx bytes"})
    assert cached.content_digest(one, "onnx") == hashlib.sha256(b"onnx bytes").hexdigest()
    files = {"config.json": b"{}", "model.safetensors": b"w" * 10, "tok/tokenizer.json": b"t"}
    hf = _fetched(tmp_path / "hf", files)
    (hf / ".kubemaas-optimized" / "k").mkdir(parents=True)  # not part of the model
    (hf / ".kubemaas-optimized" / "k" / "x").write_bytes(b"x")
    plain = _fetched(tmp_path / "plain", files)
    (plain / ".kubemaas-manifest.json").unlink()
    assert cached.content_digest(hf, "hf") == tree_digest(plain)
    with pytest.raises(StartupError, match="not a finished model cache"):
        cached.content_digest(plain, "hf")


def test_results_that_cannot_serve_say_why(tmp_path: Path) -> None:
    out = tmp_path / "k"
    entry = out / "by-key" / "abc"
    entry.mkdir(parents=True)
    assert "does not exist" in str(cached.read_result(out, "d1"))
    cached.publish(out, "d1", entry, {"servedFile": "model.onnx", "serving": "optimized",
                                      "cached": False})
    assert "model.onnx is missing" in str(cached.read_result(out, "d1"))
    (entry / "model.onnx").write_bytes(b"m")
    assert "another download" in str(cached.read_result(out, "d2"))
    report, served = cached.read_result(out, "d1")  # type: ignore[misc]
    assert served == entry / "model.onnx" and "cached" not in report
