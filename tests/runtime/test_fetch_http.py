"""The downloader (python -m kubemaas_runtime.fetch) against a local HTTP server: a folder with an
index.json and a single file; progress lines; the manifest and the report; a restart of a
complete directory is a no-op; a fetch killed half way resumes with Range requests and fetches no
byte twice; a server that stops sending is Stalled; a checksum mismatch names both sums; nothing
is ever left under a final name from a partial file."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.storage_dir import fetch_model_dir
from kubemaas_testbed.model_servers import FileServer, write_index
from tests.helpers import wait_for

from .fetch_helpers import Fetch, run_fetch, workers_of

MANIFEST = ".kubemaas-manifest.json"


def make_model(root: Path, big: int = 4 << 20) -> dict[str, bytes]:
    rng = hashlib.sha256(b"seed")
    blocks = []
    while sum(map(len, blocks)) < big:
        rng = hashlib.sha256(rng.digest())
        blocks.append(rng.digest() * 2048)
    files = {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                                   "num_hidden_layers": 2, "num_attention_heads": 4,
                                   "num_key_value_heads": 2, "max_position_embeddings": 512,
                                   "torch_dtype": "float16"}).encode(),
        "weights/model-00001.bin": b"".join(blocks)[:big],
        "weights/model-00002.bin": b"".join(blocks)[: big // 2][::-1],
        "tokenizer.json": b'{"version": "1.0"}',
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


@pytest.fixture
def model_root(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "srv" / "llm"
    files = make_model(root)
    write_index(root)
    return root, files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_fetched(dest: Path, files: dict[str, bytes], report: dict[str, Any]) -> None:
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data, rel
    assert {f["path"]: (f["size"], f["sha256"]) for f in report["files"]} == \
        {rel: (len(data), sha(data)) for rel, data in files.items()}
    manifest = json.loads((dest / MANIFEST).read_text())
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == \
        {rel: sha(data) for rel, data in files.items()}
    assert not (dest / ".kubemaas-fetch").exists()  # no partial files, no journal left


def test_folder_with_index(model_root: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = model_root
    dest, term = tmp_path / "dest", tmp_path / "termination-log"
    with FileServer(root.parent) as server:
        rc, report, fetch = run_fetch(["--source", f"{server.url}/llm/", "--dest", str(dest),
                                       "--parallel", "3", "--progress-interval", "0.1",
                                       "--termination-log", str(term)])
        assert rc == 0, fetch.stderr
        assert report["phase"] == "Ready" and report["reason"] is None
        assert_fetched(dest, files, report)
        total = sum(map(len, files.values()))
        assert report["bytesTotal"] == total and report["filesTotal"] == len(files)
        assert report["shape"] == {
            "architecture": "LlamaForCausalLM", "parameters": None, "weightBytes": len(
                files["weights/model-00001.bin"]) + len(files["weights/model-00002.bin"]),
            "numLayers": 2, "hiddenSize": 64, "numAttentionHeads": 4, "numKeyValueHeads": 2,
            "headDim": 16, "maxPositionEmbeddings": 512, "dtype": "float16"}
        last = fetch.progress[-1]
        assert set(last) == {"event", "bytesDone", "bytesTotal", "filesDone", "filesTotal",
                             "rateBytesPerSecond", "etaSeconds"}
        assert (last["bytesDone"], last["bytesTotal"], last["filesDone"], last["filesTotal"]) \
            == (total, total, len(files), len(files))
        assert json.loads(term.read_text()) == report
        served = dict(server.served)

        # the same fetch again: nothing is requested, the log says so
        rc, again, fetch2 = run_fetch(["--source", f"{server.url}/llm/", "--dest", str(dest)])
        assert rc == 0 and again["phase"] == "Ready" and again["message"] == "already complete"
        assert "already complete" in fetch2.stderr
        assert dict(server.served) == served
        assert again["files"] == report["files"]


def test_single_file_and_filters(model_root: tuple[Path, dict[str, bytes]],
                                 tmp_path: Path) -> None:
    root, files = model_root
    with FileServer(root.parent) as server:
        rc, report, fetch = run_fetch(["--source", f"{server.url}/llm/config.json",
                                       "--dest", str(tmp_path / "one")])
        assert rc == 0, fetch.stderr
        assert [f["path"] for f in report["files"]] == ["config.json"]
        assert (tmp_path / "one" / "config.json").read_bytes() == files["config.json"]

        rc, report, fetch = run_fetch(["--source", f"{server.url}/llm/index.json",
                                       "--dest", str(tmp_path / "some"), "--include", "*.json",
                                       "--include", "weights/", "--exclude", "*00002*"])
        assert rc == 0, fetch.stderr
        assert sorted(f["path"] for f in report["files"]) == [
            "config.json", "tokenizer.json", "weights/model-00001.bin"]
        assert "llm/weights/model-00002.bin" not in server.served
        assert server.served["llm/weights/model-00001.bin"] == len(files["weights/model-00001.bin"])

        rc, report, _ = run_fetch(["--source", f"{server.url}/llm/", "--dest",
                                   str(tmp_path / "none"), "--include", "*.gguf"])
        assert rc == 1 and report["reason"] == "NotFound" and "matches" in report["message"]
        rc, report, _ = run_fetch(["--source", f"{server.url}/nothing/here.bin", "--dest",
                                   str(tmp_path / "none")])
        assert rc == 1 and report["reason"] == "NotFound" and report["phase"] == "Failed"


def test_killed_half_way_resumes_without_fetching_bytes_twice(
        model_root: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = model_root
    dest = tmp_path / "dest"
    big = "weights/model-00001.bin"
    with FileServer(root.parent) as server:
        server.rate = 1 << 20  # 1 MiB/s per response: the 4 MiB file takes about 4 s
        args = ["--source", f"{server.url}/llm/", "--dest", str(dest), "--parallel", "2",
                "--progress-interval", "0.1"]
        first = Fetch(args)
        total = sum(map(len, files.values()))
        first.wait_event(lambda e: e["event"] == "progress" and e["bytesDone"] > total // 3)
        worker = workers_of(dest)
        assert worker, "the fetch runs its download in a worker process"
        first.kill()
        # the worker dies with its supervisor (PR_SET_PDEATHSIG): nothing keeps writing
        wait_for(lambda: not workers_of(dest), timeout=30, what="the worker to die")
        partial = dest / ".kubemaas-fetch" / "partial" / (big + ".part")
        assert partial.is_file() and 0 < partial.stat().st_size < len(files[big])
        assert not (dest / big).exists()  # a partial file never has the final name
        assert not (dest / MANIFEST).exists()
        have = partial.stat().st_size
        before = len(server.responses)
        # the runtime refuses to load a directory the downloader has not finished
        with pytest.raises(StartupError, match="still being downloaded"):
            fetch_model_dir(str(dest), str(tmp_path / "cache"))

        server.rate = None
        rc, report, fetch = run_fetch(args)
        assert rc == 0, fetch.stderr
        assert_fetched(dest, files, report)
        # the second run asked for the rest of the file only, and got exactly that
        again = [r for r in server.responses[before:] if r["path"] == f"/llm/{big}"]
        assert [(r["range"], r["sent"]) for r in again] == [
            (f"bytes={have}-", len(files[big]) - have)]
        assert fetch_model_dir(str(dest), str(tmp_path / "cache")) == dest
        # and every other file was fetched once: in full by one run, or resumed by the second
        for rel, data in files.items():
            sent = [r["sent"] for r in server.responses[before:] if r["path"] == f"/llm/{rel}"]
            assert sum(sent) <= len(data), rel


def test_server_that_stops_sending_is_stalled(model_root: tuple[Path, dict[str, bytes]],
                                              tmp_path: Path) -> None:
    root, _ = model_root
    dest = tmp_path / "dest"
    with FileServer(root.parent) as server:
        server.stall_after = 256 << 10
        rc, report, fetch = run_fetch(
            ["--source", f"{server.url}/llm/", "--dest", str(dest), "--include", "weights/*1.bin",
             "--stall-timeout", "1.5", "--retries", "1", "--backoff", "0.1",
             "--termination-log", str(tmp_path / "term")], timeout=60)
        assert rc == 1, fetch.stderr
        assert report["phase"] == "Failed" and report["reason"] == "Stalled", report
        assert report["attempts"] == 2 and report["stallTimeoutSeconds"] == 1.5
        # two attempts of at most the stall timeout each (plus start-up), not a hang
        assert report["durationSeconds"] < 2 * 1.5 + 20
        # the retry resumed where the first attempt stopped
        big = "/llm/weights/model-00001.bin"
        assert [r for p, r in server.ranges if p == big] == [None, f"bytes={256 << 10}-"]
        assert not (dest / "weights" / "model-00001.bin").exists()
        assert json.loads((tmp_path / "term").read_text())["reason"] == "Stalled"
        assert "attempt 1 failed: Stalled" in fetch.stderr


def test_checksum_mismatch_names_both_sums(model_root: tuple[Path, dict[str, bytes]],
                                           tmp_path: Path) -> None:
    root, files = model_root
    wrong = "0" * 64
    write_index(root, override={"tokenizer.json": wrong})
    dest = tmp_path / "dest"
    with FileServer(root.parent) as server:
        rc, report, fetch = run_fetch(["--source", f"{server.url}/llm/", "--dest", str(dest)])
    assert rc == 1, fetch.stderr
    assert report["reason"] == "ChecksumMismatch" and report["attempts"] == 1
    actual = sha(files["tokenizer.json"])
    assert report["expected"] == wrong and report["actual"] == actual
    assert wrong in report["message"] and actual in report["message"]
    assert report["file"] == "tokenizer.json"
    # the bad bytes are gone: neither under the final name nor kept to resume from
    assert not (dest / "tokenizer.json").exists()
    assert not (dest / ".kubemaas-fetch" / "partial" / "tokenizer.json.part").exists()
    assert not (dest / MANIFEST).exists()


def test_termination_log_is_capped(tmp_path: Path) -> None:
    root = tmp_path / "srv" / "many"
    for i in range(120):
        (root / f"shard-{i:04d}.bin").parent.mkdir(parents=True, exist_ok=True)
        (root / f"shard-{i:04d}.bin").write_bytes(os.urandom(64))
    write_index(root)
    term = tmp_path / "term"
    with FileServer(root.parent) as server:
        rc, report, fetch = run_fetch(["--source", f"{server.url}/many/", "--dest",
                                       str(tmp_path / "d"), "--termination-log", str(term)])
    assert rc == 0, fetch.stderr
    assert len(report["files"]) == 120  # stdout has them all
    capped = term.read_bytes()
    assert len(capped) <= 4096
    doc = json.loads(capped)
    assert doc["phase"] == "Ready" and doc["filesTotal"] == 120
    assert doc["filesOmitted"] == 120 - len(doc["files"]) > 0
    assert doc["files"] == report["files"][: len(doc["files"])]


def test_sigterm_stops_the_fetch_and_keeps_the_partial_files(
        model_root: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    """A deleted pod: its PID 1 gets SIGTERM (which has no default action for PID 1)."""
    root, _ = model_root
    dest = tmp_path / "dest"
    with FileServer(root.parent) as server:
        server.rate = 1 << 20
        fetch = Fetch(["--source", f"{server.url}/llm/", "--dest", str(dest),
                       "--progress-interval", "0.1"])
        fetch.wait_event(lambda e: e["event"] == "progress" and e["bytesDone"] > 0)
        fetch.proc.send_signal(signal.SIGTERM)
        assert fetch.proc.wait(30) == 128 + signal.SIGTERM
        fetch.kill()  # closes the pipes; the process is already gone
        wait_for(lambda: not workers_of(dest), timeout=30, what="the worker to stop")
        parts = list((dest / ".kubemaas-fetch" / "partial").rglob("*.part"))
        assert parts and not (dest / MANIFEST).exists()


def test_another_source_into_a_complete_dir_fetches_again(
        model_root: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = model_root
    dest = tmp_path / "dest"
    with FileServer(root.parent) as server:
        rc, _, _ = run_fetch(["--source", f"{server.url}/llm/", "--dest", str(dest),
                              "--include", "*.json"])
        assert rc == 0
        rc, report, fetch = run_fetch(["--source", f"{server.url}/llm/", "--dest", str(dest)])
    assert rc == 0 and report["message"] != "already complete", fetch.stderr
    assert "another fetch's manifest" in fetch.stderr
    assert_fetched(dest, files, report)
