"""The SavedModel archives the tfconvert init container unpacks: damaged, foreign and oversized
ones are refused in one line that names the archive, nothing is written outside the target, and
what an archive may unpack to is bounded (no TensorFlow needed: this is the unpacking only)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.storage import S3Config
from kubemaas_runtime.tfconvert import main, resolve, signature_names

S3 = S3Config.from_env({}, None, None)


def _resolve(archive: Path, work: Path, limit: int | None = None) -> Path:
    extra = {} if limit is None else {"max_unpacked": limit}
    return resolve(str(archive), work, None, S3, 10, **extra)[0]


def _tar_gz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_truncated_tar_gz_is_one_line_not_a_traceback(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        ) -> None:
    archive = _tar_gz(tmp_path / "m.tar.gz", {"m/saved_model.pb": bytes(range(256)) * 400,
                                              "m/variables/v.data": b"\1" * 50_000})
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(StartupError, match=r"cannot unpack m\.tar\.gz: Compressed file ended"):
        _resolve(archive, tmp_path / "work")
    assert main(["--model-uri", str(archive), "--out", str(tmp_path / "out")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tfconvert: error: cannot unpack m.tar.gz: "), line


def test_a_file_that_is_no_archive_is_one_line(tmp_path: Path) -> None:
    archive = tmp_path / "m.tgz"
    archive.write_bytes(b"not a tar file at all")
    with pytest.raises(StartupError) as err:
        _resolve(archive, tmp_path / "work")
    assert "\n" not in str(err.value) and "cannot unpack m.tgz" in str(err.value), err.value


def test_an_archive_without_a_savedmodel_is_named(tmp_path: Path) -> None:
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(StartupError, match=r"^the archive m\.zip must hold exactly one "
                                           r"SavedModel \(saved_model\.pb\); found 0$"):
        _resolve(archive, tmp_path / "work")


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_an_archive_that_unpacks_past_the_limit_is_refused_before_writing(
        tmp_path: Path, suffix: str) -> None:
    archive = tmp_path / f"bomb{suffix}"
    zeros = bytes(4 << 20)  # 4 MiB of zeros compress to a few KiB
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("m/saved_model.pb", b"x")
            zf.writestr("m/variables/v.data", zeros)
    else:
        _tar_gz(archive, {"m/saved_model.pb": b"x", "m/variables/v.data": zeros})
    assert archive.stat().st_size < 64 << 10
    work = tmp_path / "work"
    with pytest.raises(StartupError, match=rf"bomb{suffix} unpacks to 4194305 bytes, more "
                                           r"than the limit of 1048576 \(--max-unpacked-"
                                           r"bytes\); not unpacked"):
        _resolve(archive, work, limit=1 << 20)
    assert not [p for p in work.rglob("*") if p.is_file() and p.parent.name != "download"]
    assert _resolve(archive, tmp_path / "again", limit=8 << 20).name == "m"  # under it: fine


def test_traversal_and_links_out_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "evil.txt"
    zipped = tmp_path / "t.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(StartupError, match="unsafe path"):
        _resolve(zipped, tmp_path / "w1")
    tarred = tmp_path / "l.tar"
    with tarfile.open(tarred, "w") as tar:
        link = tarfile.TarInfo("m")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
        tar.addfile(link)
        data = tarfile.TarInfo("m/evil.txt")
        data.size = 1
        tar.addfile(data, io.BytesIO(b"x"))
    with pytest.raises(StartupError, match="link to an absolute path"):
        _resolve(tarred, tmp_path / "w2")
    assert not outside.exists()


def test_timeout_s_bounds_the_conversion_too(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """--timeout-s 5 used to bound the download only; tf2onnx ran under its own 1800 s."""
    import subprocess

    from kubemaas_runtime import tfconvert

    saved = tmp_path / "m"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"x")
    seen: list[float] = []

    def slow(cmd: list[str], **kwargs: Any) -> None:
        seen.append(kwargs["timeout"])
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(tfconvert.subprocess, "run", slow)
    assert main(["--model-uri", str(saved), "--out", str(tmp_path / "out"),
                 "--timeout-s", "5"]) == 1
    assert seen == [5.0]
    assert capsys.readouterr().err.strip() == (
        "tfconvert: error: tf2onnx did not finish within 5 s")


def _field(number: int, data: bytes) -> bytes:
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data


def test_signature_names_are_read_from_saved_model_pb(tmp_path: Path) -> None:
    """What chooses tf2onnx's --signature_def: the SignatureDef keys in saved_model.pb's wire
    format (SavedModel.meta_graphs = 2 -> MetaGraphDef.signature_def = 5 -> key = 1), with the
    other fields (a varint, a fixed64, other messages) stepped over; a damaged file is None."""
    graph = (bytes([3 << 3 | 0, 0x96, 0x01]) + bytes([4 << 3 | 1]) + b"\x00" * 8
             + _field(1, b"meta info") + _field(5, _field(1, b"a_other") + _field(2, b"x"))
             + _field(5, _field(1, b"serving_default") + _field(2, b"")))
    pb = bytes([1 << 3 | 0, 1]) + _field(2, graph)
    (tmp_path / "saved_model.pb").write_bytes(pb)
    assert signature_names(tmp_path) == ["a_other", "serving_default"]
    (tmp_path / "saved_model.pb").write_bytes(pb[:-3])
    assert signature_names(tmp_path) is None
    (tmp_path / "saved_model.pb").write_bytes(b"\xff" * 12)
    assert signature_names(tmp_path) is None
    assert signature_names(tmp_path / "missing") is None


def test_several_signatures_without_serving_default_are_refused(tmp_path: Path,
                                                               capsys: Any) -> None:
    """tf2onnx would convert whichever signature TensorFlow lists first (b_one or a_two: a
    model's answers by chance); TensorFlow Serving answers a request without signature_name
    only with serving_default."""
    graph = (_field(5, _field(1, b"__saved_model_init_op")) + _field(5, _field(1, b"b_one"))
             + _field(5, _field(1, b"a_two")))
    saved = tmp_path / "two"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(_field(2, graph))
    assert main(["--model-uri", str(saved), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == (
        "tfconvert: error: two has the signatures a_two, b_one and no serving_default: which "
        "one to serve is unknown; name one in spec.model.signature (--signature), or save it "
        "with signatures={'serving_default': ...}")
    assert not (tmp_path / "out" / "model.onnx").exists()
    assert main(["--model-uri", str(saved), "--out", str(tmp_path / "out"), "--signature",
                 "c_three"]) == 1
    assert capsys.readouterr().err.strip() == (
        "tfconvert: error: two has no signature 'c_three'; it has a_two, b_one")
    assert main(["--model-uri", str(saved), "--out", str(tmp_path / "out"), "--signature",
                 "../x"]) == 1
    assert "--signature '../x' must match" in capsys.readouterr().err
