"""Pure parts of the downloader (kubemaas_runtime.fetch): filters, paths, checksums, ETags,
rate and ETA, the model's shape, the capped report, the command line."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from kubemaas_runtime.fetch.errors import FetchError
from kubemaas_runtime.fetch.options import Options, parse_args
from kubemaas_runtime.fetch.plan import RemoteFile, safe_rel, select, selected, unique
from kubemaas_runtime.fetch.progress import RateMeter, bytes_on_disk, eta, progress_event
from kubemaas_runtime.fetch.report import capped, failed_report, ready_report
from kubemaas_runtime.fetch.shape import model_shape, read_shape
from kubemaas_runtime.fetch.sources.s3 import etag_md5, s3_settings
from kubemaas_runtime.fetch.verify import Hashes
from kubemaas_runtime.fetch.worker import already_done


def test_patterns_like_huggingface_hub() -> None:
    assert selected("model.safetensors", ["*.safetensors"], [])
    assert not selected("config.json", ["*.safetensors"], [])
    assert selected("a/b.bin", ["a/"], [])  # a folder pattern takes everything below it
    assert not selected("a/b.bin", [], ["a/"])
    assert selected("x", [], [])
    files = [RemoteFile(p, 1) for p in ("c.json", "w-1.bin", "w-2.bin", "t/v.txt")]
    assert [f.path for f in select(files, ["*.bin", "*.json"], ["*-2*"])] == ["c.json", "w-1.bin"]


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../x", ".git/config",
                                 "a/.hidden", ".", "./.", "a\0b", "a\x1b[2Jb", "a\nb",
                                 "x" * 251, "d" * 256 + "/x", "a/" * 1600 + "x", "\ud800"])
def test_unsafe_paths_are_refused(bad: str) -> None:
    with pytest.raises(FetchError) as err:
        safe_rel(bad, "the index")
    assert err.value.reason == "InvalidSource" and not err.value.transient


def test_long_and_odd_names_that_fit_are_kept() -> None:
    assert safe_rel("x" * 250, "the index") == "x" * 250  # x.part is 255 bytes
    assert safe_rel("./a/b c/ü.bin", "the index") == "a/b c/ü.bin"


def test_a_path_listed_twice() -> None:
    a, b = RemoteFile("x", 1, locator="u/x"), RemoteFile("y/z", 2, locator="u/y/z")
    assert unique([a, b, RemoteFile("x", 1, locator="u/x")], "src") == (a, b)  # same: once
    with pytest.raises(FetchError, match="duplicate path 'x'") as err:
        unique([a, RemoteFile("x", 1, sha256="0" * 64, locator="u/x")], "src")
    assert err.value.reason == "InvalidSource"
    with pytest.raises(FetchError, match="'y' is both a file and a folder"):
        unique([RemoteFile("y", 1), b], "src")


def test_a_journal_line_is_trusted_only_when_every_known_sum_matches(tmp_path: Path) -> None:
    def git(data: bytes) -> str:
        return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()

    (tmp_path / "f").write_bytes(b"old")  # an earlier revision's file, journaled
    rec = {"path": "f", "size": 3, "sha256": hashlib.sha256(b"old").hexdigest(),
           "gitSha1": git(b"old")}
    assert already_done(tmp_path, RemoteFile("f", 3, git_sha1=git(b"old")), {"f": rec},
                        None) == rec
    # the listing now names other bytes of the same size: neither the journal nor the file will do
    assert already_done(tmp_path, RemoteFile("f", 3, git_sha1=git(b"new")), {"f": rec},
                        None) is None
    assert already_done(tmp_path, RemoteFile("f", 3, md5="0" * 32), {"f": rec}, None) is None


def test_etags() -> None:
    assert etag_md5('"9e107d9d372bb6826bd81d3542a419d6"') == "9e107d9d372bb6826bd81d3542a419d6"
    assert etag_md5('"9e107d9d372bb6826bd81d3542a419d6-3"') is None  # multipart
    assert etag_md5(None) is None


def test_s3_settings_from_a_secret_dir(tmp_path: Path) -> None:
    (tmp_path / "AWS_ACCESS_KEY_ID").write_text("AKID\n")
    (tmp_path / "AWS_SECRET_ACCESS_KEY").write_text("secret\n")
    got = s3_settings({"AWS_ACCESS_KEY_ID": "env", "AWS_REGION": "eu-west-1"}, str(tmp_path))
    assert got == {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret",
                   "AWS_REGION": "eu-west-1"}


def test_hashes_check_every_known_sum() -> None:
    data = b"hello world\n"
    git = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    spec = RemoteFile("f", len(data), sha256=hashlib.sha256(data).hexdigest(),
                      md5=hashlib.md5(data, usedforsecurity=False).hexdigest(), git_sha1=git)
    h = Hashes(spec)
    h.update(data[:5])
    h.update(data[5:])
    assert h.check() == hashlib.sha256(data).hexdigest()
    bad = Hashes(RemoteFile("f", len(data), git_sha1="0" * 40))
    bad.update(data)
    with pytest.raises(FetchError) as err:
        bad.check()
    e = err.value
    assert (e.reason, e.details["algorithm"], e.details["expected"], e.details["actual"]) == \
        ("ChecksumMismatch", "git-sha1", "0" * 40, git)
    assert "0" * 40 in e.message and git in e.message
    # a sum the server vouched for while answering (S3 metadata) wins over none
    vouched = Hashes(RemoteFile("f", len(data)))
    vouched.update(data)
    with pytest.raises(FetchError, match="expected sha256 " + "f" * 64):
        vouched.check("F" * 64)


def test_rate_and_eta() -> None:
    meter = RateMeter(window_s=10)
    assert meter.rate() == 0.0
    for t in range(0, 31):
        meter.add(float(t), t * 100)
    assert meter.rate() == pytest.approx(100.0)
    assert meter.samples[0][0] >= 19  # only the last window counts
    assert eta(500, 1000, 100.0) == 5.0
    assert eta(1000, 1000, 0.0) == 0.0
    assert eta(10, 1000, 0.0) is None
    ev = progress_event(10, 100, 1, 3, 12.4)
    assert ev == {"event": "progress", "bytesDone": 10, "bytesTotal": 100, "filesDone": 1,
                  "filesTotal": 3, "rateBytesPerSecond": 12, "etaSeconds": 7.3}


def test_bytes_on_disk_counts_partials_and_finished_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    part = tmp_path / ".kubemaas-fetch" / "partial" / "d" / "b.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"y" * 4)
    files = (RemoteFile("a", 10), RemoteFile("d/b", 8), RemoteFile("c", 5))
    assert bytes_on_disk(tmp_path, files) == (14, 1)


LLAMA = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
         "torch_dtype": "bfloat16"}


def test_shape_of_a_llama() -> None:
    tensors = [("BF16", [128256, 4096]), ("BF16", [4096])]
    assert model_shape(LLAMA, tensors) == {
        "architecture": "LlamaForCausalLM", "parameters": 128256 * 4096 + 4096,
        "weightBytes": 2 * (128256 * 4096 + 4096), "numLayers": 32, "hiddenSize": 4096,
        "numAttentionHeads": 32, "numKeyValueHeads": 8, "headDim": 128,
        "maxPositionEmbeddings": 131072, "dtype": "bfloat16"}


def test_shape_of_gpt2_and_of_a_nested_text_config() -> None:
    gpt2 = {"architectures": ["GPT2LMHeadModel"], "n_layer": 12, "n_embd": 768, "n_head": 12,
            "n_positions": 1024}
    got = model_shape(gpt2, [("F32", [50257, 768])])
    assert (got["numLayers"], got["hiddenSize"], got["numAttentionHeads"],
            got["numKeyValueHeads"], got["headDim"], got["maxPositionEmbeddings"],
            got["dtype"]) == (12, 768, 12, 12, 64, 1024, "float32")
    vlm = {"architectures": ["LlavaForConditionalGeneration"], "text_config": {
        "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16,
        "head_dim": 256, "dtype": "float16"}}
    got = model_shape(vlm, [], weight_file_bytes=123)
    assert (got["architecture"], got["hiddenSize"], got["headDim"], got["dtype"],
            got["parameters"], got["weightBytes"]) == (
        "LlavaForConditionalGeneration", 2048, 256, "float16", None, 123)


def test_read_shape_from_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "w": {"dtype": "BF16", "shape": [4, 8], "data_offsets": [0, 64]}})
    raw = header.encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)
    got = read_shape(tmp_path, ["config.json", "model.safetensors"])
    assert got is not None and (got["parameters"], got["weightBytes"]) == (32, 64)
    assert read_shape(tmp_path, ["model.safetensors"]) is None  # no config.json: no shape


def test_the_termination_log_fits_in_4096_bytes() -> None:
    manifest = {"source": "s3://b/p/", "revision": None, "bytesTotal": 1, "shape": None,
                "files": [{"path": f"model-{i:05d}-of-01000.safetensors", "size": 5 << 30,
                           "sha256": "ab" * 32} for i in range(1000)]}
    report = ready_report(manifest, "fetched", attempts=1)
    text = capped(report)
    doc = json.loads(text)
    assert len(text.encode()) <= 4096
    assert doc["filesOmitted"] == 1000 - len(doc["files"]) and 0 < len(doc["files"]) < 1000
    assert capped(failed_report("s3://b/", "Stalled", "no progress")) == \
        json.dumps(failed_report("s3://b/", "Stalled", "no progress"), separators=(",", ":"))
    long = capped(failed_report("s3://b/", "DownloadError", "x" * 10000))
    assert len(long.encode()) <= 4096 and json.loads(long)["message"].endswith("…")


def test_command_line(tmp_path: Path) -> None:
    opts = parse_args(["--source", "hf://org/name", "--dest", str(tmp_path), "--revision", "v1",
                       "--include", "*.json", "--include", "*.safetensors", "--exclude", "x*",
                       "--parallel", "4", "--stall-timeout", "30", "--retries", "2",
                       "--progress-interval", "1", "--termination-log", "/tmp/t"])
    assert (opts.include, opts.exclude, opts.parallel, opts.stall_timeout, opts.retries) == (
        ("*.json", "*.safetensors"), ("x*",), 4, 30.0, 2)
    assert Options.from_json(opts.to_json()) == opts
    with pytest.raises(SystemExit):
        parse_args(["--source", "s3://b/", "--dest", "d", "--parallel", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--source", "s3://b/", "--dest", "d", "--retries", "-1"])


MISTRAL_V01 = {"model_type": "mistral", "num_hidden_layers": 32, "sliding_window": 4096}


@pytest.mark.parametrize(("config", "window"), [
    (MISTRAL_V01, (4096, 32)),  # every layer
    ({**MISTRAL_V01, "sliding_window": None}, None),  # Mistral 7B v0.2/v0.3
    ({"model_type": "mixtral", "num_hidden_layers": 32, "sliding_window": 4096}, (4096, 32)),
    ({"model_type": "phi3", "num_hidden_layers": 32, "sliding_window": 2047}, (2047, 32)),
    ({"model_type": "qwen3_moe", "num_hidden_layers": 48, "sliding_window": 4096,
      "use_sliding_window": True}, (4096, 48)),
    # Llama does not apply the sliding_window its config may carry
    ({"model_type": "llama", "num_hidden_layers": 32, "sliding_window": 4096}, None),
    # Gemma 2 and 3 as transformers writes them (layer_types) and as older configs are (none)
    ({"model_type": "gemma2", "num_hidden_layers": 42, "sliding_window": 4096,
      "layer_types": ["sliding_attention", "full_attention"] * 21}, (4096, 21)),
    ({"model_type": "gemma2", "num_hidden_layers": 42, "sliding_window": 4096}, (4096, 21)),
    ({"model_type": "gemma3_text", "num_hidden_layers": 62, "sliding_window": 1024,
      "sliding_window_pattern": 6}, (1024, 52)),
    # Qwen2: off unless use_sliding_window; then the layers from max_window_layers on
    ({"model_type": "qwen2", "num_hidden_layers": 28, "sliding_window": 131072,
      "use_sliding_window": False, "max_window_layers": 21}, None),
    ({"model_type": "qwen2", "num_hidden_layers": 28, "sliding_window": 4096,
      "use_sliding_window": True, "max_window_layers": 21}, (4096, 7)),
    ({"model_type": "qwen2", "num_hidden_layers": 28, "sliding_window": 4096,
      "use_sliding_window": True, "max_window_layers": 28}, None),
    ({"model_type": "mistral", "num_hidden_layers": 32, "sliding_window": 0}, None),
    ({"model_type": "gemma3_text", "num_hidden_layers": 4, "sliding_window": 512,
      "layer_types": ["full_attention"] * 4}, None),
])
def test_the_shape_records_the_sliding_window(config: dict[str, object],
                                              window: tuple[int, int] | None) -> None:
    got = model_shape(config, [])
    recorded = (got["slidingWindow"], got["slidingWindowLayers"]) if "slidingWindow" in got \
        else None
    assert recorded == window
    assert ("slidingWindowLayers" in got) == ("slidingWindow" in got)


def test_a_nested_text_config_gives_its_window() -> None:
    gemma3 = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "text_config": {"model_type": "gemma3_text", "num_hidden_layers": 12,
                              "sliding_window": 1024,
                              "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 2}}
    got = model_shape(gemma3, [])
    assert (got["slidingWindow"], got["slidingWindowLayers"]) == (1024, 10)
