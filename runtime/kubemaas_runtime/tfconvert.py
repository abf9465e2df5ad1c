"""Convert a TensorFlow SavedModel to ONNX before the runtime starts (format ``tf-savedmodel``).

``python -m kubemaas_runtime.tfconvert --model-uri URI --out DIR [--model-sha256 HEX]
[--signature NAME]``

Runs where TensorFlow and tf2onnx are installed: the converter image (runtime/Dockerfile.tfconvert),
which the operator starts as the runtime pod's init container. The runtime image has no
TensorFlow; it serves the ONNX file this writes, ``DIR/model.onnx``, with onnxruntime.

The SavedModel is a directory (a local path or file://, e.g. a mounted volume) or an archive of
one (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``) at any URI the runtime can fetch. Its checksum
is the sha256 of the archive, or for a directory a digest of its files (``--digest DIR`` prints
it: sha256 of the sorted lines "RELATIVE_PATH SHA256_OF_FILE"). The conversion is cached per
checksum (``DIR/by-sha256/<checksum>/model.onnx``): a restarted init container, or a pod whose
cache volume outlives it, converts once. Every failure is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from .errors import StartupError
from .storage import S3Config, fetch_model, sha256_file

ARCHIVES = (".tar", ".tar.gz", ".tgz", ".zip")
OPSET = 17
SERVING_DEFAULT = "serving_default"
_SIGNATURE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # as the runtime's names
# what an archive may unpack to, all files together (its members' declared sizes, which bound
# what is written): a small archive of zeros must not fill the pod's cache volume or the node
MAX_UNPACKED_BYTES = 64 * 2**30
# how a damaged or foreign archive fails while it is read (a truncated .tar.gz: EOFError)
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error,
                   lzma.LZMAError)
_UNSUPPORTED_OP = re.compile(r"Tensorflow op \[(?P<node>[^\]]*?): (?P<op>[^\]:]+)\] is not "
                             r"supported")
_UNSUPPORTED_LIST = re.compile(r"Unsupported ops: .*")


def tree_digest(directory: Path) -> str:
    """sha256 over "RELATIVE_PATH SHA256\\n" of every file under ``directory``, sorted by path."""
    lines = sorted(f"{p.relative_to(directory).as_posix()} {sha256_file(p)}\n"
                   for p in directory.rglob("*") if p.is_file())
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _local_path(uri: str) -> Path | None:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme in ("", "file"):
        return Path(urllib.parse.unquote(parsed.path) if parsed.scheme else uri)
    return None


def _find_saved_model(root: Path, label: str | None = None) -> Path:
    found = sorted(p.parent for p in root.rglob("saved_model.pb"))
    if len(found) != 1:
        raise StartupError(f"{label or root} must hold exactly one SavedModel (saved_model.pb); "
                           f"found {len(found)}")
    return found[0]


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("a truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _messages(buf: memoryview, number: int) -> list[memoryview]:
    """The length-delimited fields ``number`` of one protobuf message (its wire format)."""
    found, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("a field runs past its message")
            if key >> 3 == number:
                found.append(buf[pos:pos + size])
            pos += size
        else:
            raise ValueError(f"wire type {wire}")
    return found


def signature_names(saved: Path) -> list[str] | None:
    """The SignatureDef keys of a SavedModel, read from saved_model.pb without TensorFlow
    (SavedModel.meta_graphs = 2, MetaGraphDef.signature_def = 5, a map entry's key = 1); None
    when the file cannot be read so."""
    try:
        data = memoryview((saved / "saved_model.pb").read_bytes())
        return [bytes(key).decode() for graph in _messages(data, 2)
                for entry in _messages(graph, 5) for key in _messages(entry, 1)]
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def _check_size(archive: Path, total: int, dest: Path, limit: int) -> None:
    free = shutil.disk_usage(dest).free
    if total > limit:
        raise StartupError(f"{archive.name} unpacks to {total} bytes, more than the limit of "
                           f"{limit} (--max-unpacked-bytes); not unpacked")
    if total > free:
        raise StartupError(f"{archive.name} unpacks to {total} bytes, more than the {free} "
                           f"bytes free in {dest}; not unpacked")


def _unpack(archive: Path, dest: Path, limit: int = MAX_UNPACKED_BYTES) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise StartupError(f"{archive.name}: unsafe path {member!r}")
                _check_size(archive, sum(i.file_size for i in zf.infolist()), dest, limit)
                zf.extractall(dest)
        else:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                _check_size(archive, sum(m.size for m in members if m.isfile()), dest, limit)
                # no absolute paths, links out, devices
                tf.extractall(dest, members=members, filter="data")
    except _ARCHIVE_ERRORS as exc:
        reason = "; ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
        reason = reason.replace(":; ", ": ")
        raise StartupError(f"cannot unpack {archive.name}: "
                           f"{reason or type(exc).__name__}") from None
    return _find_saved_model(dest, f"the archive {archive.name}")


def resolve(uri: str, work: Path, sha256: str | None, s3: S3Config,
            timeout_s: float, max_unpacked: int = MAX_UNPACKED_BYTES) -> tuple[Path, str]:
    """The SavedModel directory and its checksum (verified against ``sha256`` if given)."""
    local = _local_path(uri)
    if local is not None and local.is_dir():
        saved = _find_saved_model(local)
        digest = tree_digest(saved)
        if sha256 is not None and digest != sha256:
            raise StartupError(f"checksum mismatch for {uri}: expected sha256 {sha256}, got "
                               f"{digest} (the digest of the SavedModel's files; see --digest)")
        return saved, digest
    path = urllib.parse.urlsplit(uri).path.lower()
    if not path.endswith(ARCHIVES):
        raise StartupError(f"{uri} is neither a SavedModel directory nor an archive of one "
                           f"({', '.join(ARCHIVES)})")
    archive = fetch_model(uri, str(work / "download"), sha256=sha256, s3=s3,
                          timeout_s=timeout_s)
    digest = sha256 or sha256_file(archive)
    return _unpack(archive, work / "unpacked" / digest, max_unpacked), digest


def _one_line(text: str) -> str:
    """tf2onnx's reason in one line: the unsupported TensorFlow op(s) when that is the cause,
    else its last error line."""
    ops = [m for m in map(_UNSUPPORTED_OP.search, text.splitlines()) if m]
    if ops:
        first = ops[0]
        more = f" (and {len(ops) - 1} more)" if len(ops) > 1 else ""
        return (f"TensorFlow op {first['op']} (node {first['node']}) is not supported by "
                f"tf2onnx{more}")
    listed = _UNSUPPORTED_LIST.search(text)
    if listed:
        return listed.group(0)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "ERROR" in ln]
    return (errors or lines or ["no output"])[-1][:400]


def _signature_args(saved: Path, wanted: str | None = None) -> list[str]:
    """TensorFlow Serving answers with serving_default (v1 requests name no other); tf2onnx
    converts the first signature TensorFlow lists unless told, which need not be that one, so
    it is told. `wanted` (--signature, spec.model.signature) picks another, which must be
    there. A SavedModel of several signatures but no serving_default, and none wanted, is
    refused (which one to serve is unknown)."""
    names = signature_names(saved)
    served = sorted(n for n in names or [] if not n.startswith("_"))  # __saved_model_init_op
    if wanted is not None:
        if names is not None and wanted not in served:
            raise StartupError(f"{saved.name} has no signature {wanted!r}; it has "
                               f"{', '.join(served) or 'none'}")
        return ["--signature_def", wanted]
    if SERVING_DEFAULT in served:
        return ["--signature_def", SERVING_DEFAULT]
    if len(served) > 1:
        raise StartupError(f"{saved.name} has the signatures {', '.join(served)} and no "
                           f"{SERVING_DEFAULT}: which one to serve is unknown; name one in "
                           f"spec.model.signature (--signature), or save it with "
                           f"signatures={{'{SERVING_DEFAULT}': ...}}")
    return []


def convert(saved: Path, dest: Path, opset: int = OPSET, timeout_s: float = 1800,
            signature: str | None = None) -> None:
    """tf2onnx, in a child process (its logging and TensorFlow's stay out of ours); the result
    is written next to ``dest`` and renamed into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".partial-", suffix=".onnx", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    chosen = _signature_args(saved, signature)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved),
             "--output", str(tmp), "--opset", str(opset), *chosen],
            capture_output=True, text=True, timeout=timeout_s,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
        if proc.returncode != 0 or "Unsupported ops" in proc.stderr or not tmp.stat().st_size:
            raise StartupError(f"tf2onnx cannot convert {saved.name}: "
                               f"{_one_line(proc.stderr + proc.stdout)}")
        os.replace(tmp, dest)
    except subprocess.TimeoutExpired:
        raise StartupError(f"tf2onnx did not finish within {timeout_s:.0f} s") from None
    finally:
        tmp.unlink(missing_ok=True)


def run(uri: str, out: Path, sha256: str | None, s3: S3Config, timeout_s: float,
        max_unpacked: int = MAX_UNPACKED_BYTES, signature: str | None = None) -> Path:
    """Resolve, convert unless cached, and place ``out/model.onnx``; returns that path. A
    signature other than serving_default is cached apart (one SavedModel, two graphs)."""
    started = time.perf_counter()
    saved, digest = resolve(uri, out / "work", sha256, s3, timeout_s, max_unpacked)
    cached = out / "by-sha256" / digest / "model.onnx"
    if signature not in (None, SERVING_DEFAULT):
        cached = out / "by-sha256" / digest / "signatures" / str(signature) / "model.onnx"
    hit = cached.is_file()
    if not hit:
        convert(saved, cached, timeout_s=timeout_s, signature=signature)
    final = out / "model.onnx"
    tmp = out / f".model.onnx.{os.getpid()}"
    shutil.copyfile(cached, tmp)
    os.replace(tmp, final)
    shutil.rmtree(out / "work", ignore_errors=True)
    print(f"tfconvert: {'cached' if hit else 'converted'} {uri} (sha256 {digest}) -> {final} "
          f"in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return final


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubemaas_runtime.tfconvert",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", default=os.environ.get("KUBEMAAS_MODEL_URI"))
    parser.add_argument("--out", default=os.environ.get("KUBEMAAS_CONVERT_DIR"))
    parser.add_argument("--model-sha256", default=os.environ.get("KUBEMAAS_MODEL_SHA256"))
    parser.add_argument("--s3-endpoint", default=os.environ.get("KUBEMAAS_S3_ENDPOINT"))
    parser.add_argument("--s3-credentials-dir",
                        default=os.environ.get("KUBEMAAS_S3_CREDENTIALS_DIR"))
    parser.add_argument("--signature", default=os.environ.get("KUBEMAAS_SIGNATURE") or None,
                        help="the SavedModel's signature to convert (default serving_default, "
                        "or its only one)")
    parser.add_argument("--timeout-s", type=float, default=1800.0,
                        help="bound on the download and on the conversion, each (seconds)")
    parser.add_argument("--max-unpacked-bytes", type=int, default=MAX_UNPACKED_BYTES,
                        help="refuse an archive whose files add up to more (default 64 GiB)")
    parser.add_argument("--digest", metavar="DIR", help="print a SavedModel directory's "
                        "checksum (what spec.model.sha256 holds for it) and exit")
    args = parser.parse_args(argv)
    try:
        if args.digest:
            print(tree_digest(_find_saved_model(Path(args.digest))))
            return 0
        if not args.model_uri or not args.out:
            raise StartupError("--model-uri (KUBEMAAS_MODEL_URI) and --out "
                               "(KUBEMAAS_CONVERT_DIR) are required")
        if args.signature is not None and not _SIGNATURE_NAME.match(args.signature):
            raise StartupError(f"--signature {args.signature!r} must match "
                               f"{_SIGNATURE_NAME.pattern}")
        sha = args.model_sha256.strip().lower() if args.model_sha256 else None
        s3 = S3Config.from_env(os.environ, args.s3_endpoint, args.s3_credentials_dir)
        run(args.model_uri, Path(args.out), sha, s3, args.timeout_s, args.max_unpacked_bytes,
            args.signature)
    except StartupError as exc:
        print(f"tfconvert: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
