"""The downloader against a local S3-compatible server (moto's server mode, in its own cached
virtualenv; the files are uploaded with that venv's boto3): a prefix and a single object,
include filters, single-part ETags (md5) and multipart ETags, ``x-amz-meta-sha256`` checked, a
resumed object read with a ranged GET (the server's access log shows the 206), a partial file
with the wrong bytes caught by the ETag, credentials from a mounted-Secret directory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fetch_helpers import moto_server, plant_partial, run_fetch, s3_upload

MIB = 1 << 20


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(endpoint, access log, moto's python)."""
    log = tmp_path_factory.mktemp("moto") / "access.log"
    with moto_server(log) as (endpoint, python):
        yield endpoint, log, python


@pytest.fixture(scope="module")
def bucket(moto: tuple[str, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> \
        dict[str, bytes]:
    endpoint, _, python = moto
    src = tmp_path_factory.mktemp("objects")
    files = {"config.json": b'{"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2}',
             "model.bin": os.urandom(3 * MIB),
             "big/shard.bin": os.urandom(12 * MIB),  # uploaded in three 5 MiB parts
             "tok/vocab.txt": b"a\nb\n"}
    items: list[dict[str, object]] = [{"bucket_only": True, "bucket": "models"}]
    for rel, data in files.items():
        path = src / rel.replace("/", "_")
        path.write_bytes(data)
        item: dict[str, object] = {"bucket": "models", "key": f"team a/gpt/{rel}",
                                   "path": str(path)}
        if rel == "model.bin":
            item["metadata"] = {"sha256": hashlib.sha256(data).hexdigest()}
        if rel == "big/shard.bin":
            item["multipart"] = True
        items.append(item)
    bad = src / "bad"
    bad.write_bytes(b"these bytes are not what the metadata says")
    items.append({"bucket": "models", "key": "bad/model.bin", "path": str(bad),
                  "metadata": {"sha256": "f" * 64}})
    s3_upload(python, endpoint, items)
    return files


def env(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL_S3": endpoint}


def test_prefix(moto: tuple[str, Path, Path], bucket: dict[str, bytes], tmp_path: Path) -> None:
    endpoint = moto[0]
    dest = tmp_path / "dest"
    rc, report, fetch = run_fetch(["--source", "s3://models/team a/gpt/", "--dest", str(dest),
                                   "--parallel", "4", "--progress-interval", "0.1"],
                                  env(endpoint))
    assert rc == 0, fetch.stderr
    assert {f["path"]: f["sha256"] for f in report["files"]} == \
        {rel: hashlib.sha256(data).hexdigest() for rel, data in bucket.items()}
    for rel, data in bucket.items():
        assert (dest / rel).read_bytes() == data
    assert report["shape"]["architecture"] == "gpt2" and report["shape"]["numLayers"] == 2
    assert report["shape"]["hiddenSize"] == 32 and report["shape"]["headDim"] == 16
    assert fetch.progress[-1]["bytesDone"] == sum(map(len, bucket.values()))


def test_single_object_filters_and_credentials_dir(moto: tuple[str, Path, Path],
                                                   bucket: dict[str, bytes],
                                                   tmp_path: Path) -> None:
    endpoint = moto[0]
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "AWS_ACCESS_KEY_ID").write_text("testing\n")
    (secret / "AWS_SECRET_ACCESS_KEY").write_text("testing\n")
    rc, report, fetch = run_fetch(["--source", "s3://models/team a/gpt/model.bin", "--dest",
                                   str(tmp_path / "one"), "--s3-endpoint", endpoint,
                                   "--s3-credentials-dir", str(secret)])
    assert rc == 0, fetch.stderr
    assert [f["path"] for f in report["files"]] == ["model.bin"]
    rc, report, fetch = run_fetch(["--source", "s3://models/team a/gpt", "--dest",
                                   str(tmp_path / "some"), "--include", "*.json",
                                   "--include", "tok/"], env(endpoint))
    assert rc == 0, fetch.stderr
    assert sorted(f["path"] for f in report["files"]) == ["config.json", "tok/vocab.txt"]
    rc, report, _ = run_fetch(["--source", "s3://no-such-bucket/x/", "--dest",
                               str(tmp_path / "none")], env(endpoint))
    assert rc == 1 and report["reason"] == "NotFound", report
    rc, report, _ = run_fetch(["--source", "s3://models/nothing/", "--dest",
                               str(tmp_path / "none")], env(endpoint))
    assert rc == 1 and report["reason"] == "NotFound", report


def test_metadata_sha256_is_checked(moto: tuple[str, Path, Path], bucket: dict[str, bytes],
                                    tmp_path: Path) -> None:
    rc, report, fetch = run_fetch(["--source", "s3://models/bad/", "--dest",
                                   str(tmp_path / "d")], env(moto[0]))
    assert rc == 1, fetch.stderr
    assert report["reason"] == "ChecksumMismatch" and report["expected"] == "f" * 64
    assert report["actual"] == hashlib.sha256(
        b"these bytes are not what the metadata says").hexdigest()
    assert not (tmp_path / "d" / "model.bin").exists()


def test_resume_with_a_ranged_get_and_a_bad_partial(moto: tuple[str, Path, Path],
                                                    bucket: dict[str, bytes],
                                                    tmp_path: Path) -> None:
    endpoint, log, _ = moto
    data = bucket["model.bin"]
    dest = tmp_path / "dest"
    plant_partial(dest, "model.bin", data[: 2 * MIB], "s3://models/team a/gpt/model.bin")
    seen = len(log.read_text())
    rc, report, fetch = run_fetch(["--source", "s3://models/team a/gpt/model.bin", "--dest",
                                   str(dest)], env(endpoint))
    assert rc == 0, fetch.stderr
    assert (dest / "model.bin").read_bytes() == data
    lines = [line for line in log.read_text()[seen:].splitlines()
             if "GET /models/team%20a/gpt/model.bin " in line]
    assert any('" 206 ' in line for line in lines), lines  # Partial Content: the rest only
    assert not any('" 200 ' in line for line in lines), lines

    # a partial file with the wrong bytes: the sha256 in the object's metadata catches it
    dest2 = tmp_path / "dest2"
    bad = plant_partial(dest2, "model.bin", b"\1" * MIB, "s3://models/team a/gpt/model.bin")
    rc, report, fetch = run_fetch(["--source", "s3://models/team a/gpt/model.bin", "--dest",
                                   str(dest2)], env(endpoint))
    assert rc == 1 and report["reason"] == "ChecksumMismatch", fetch.stderr
    assert (report["algorithm"], report["expected"]) == ("sha256", hashlib.sha256(data).hexdigest())
    assert not (dest2 / "model.bin").exists() and not bad.exists()

    # no metadata: the single-part ETag (the object's md5) catches it
    dest3 = tmp_path / "dest3"
    bad = plant_partial(dest3, "vocab.txt", b"x", "s3://models/team a/gpt/tok/vocab.txt")
    rc, report, fetch = run_fetch(["--source", "s3://models/team a/gpt/tok/vocab.txt", "--dest",
                                   str(dest3)], env(endpoint))
    assert rc == 1 and report["reason"] == "ChecksumMismatch", fetch.stderr
    assert (report["algorithm"], report["expected"]) == (
        "md5", hashlib.md5(bucket["tok/vocab.txt"], usedforsecurity=False).hexdigest())
    assert report["actual"] == hashlib.md5(b"x\nb\n", usedforsecurity=False).hexdigest()


def test_a_partial_of_another_version_starts_over(moto: tuple[str, Path, Path],
                                                  bucket: dict[str, bytes],
                                                  tmp_path: Path) -> None:
    """The partial file's bytes came with another ETag (the object was replaced since): the
    object is fetched whole, not its rest after the old bytes (a multipart object has no md5
    to catch the mix)."""
    endpoint, log, _ = moto
    data = bucket["big/shard.bin"]
    dest = tmp_path / "dest"
    source = "s3://models/team a/gpt/big/shard.bin"
    plant_partial(dest, "shard.bin", b"\1" * MIB, source, etag='"an-older-version-1"')
    seen = len(log.read_text())
    rc, _, fetch = run_fetch(["--source", source, "--dest", str(dest)], env(endpoint))
    assert rc == 0, fetch.stderr
    assert (dest / "shard.bin").read_bytes() == data
    lines = [line for line in log.read_text()[seen:].splitlines()
             if "GET /models/team%20a/gpt/big/shard.bin " in line]
    assert lines and not any('" 206 ' in line for line in lines), lines
