"""The downloader's hf:// source against a Hugging Face-compatible endpoint on 127.0.0.1
(kubemaas_testbed.model_servers.HfEndpoint, HF_ENDPOINT) serving the tiny LLM's files, as the
real huggingface_hub client sees them: revision resolved to a commit, LFS sha256 and git blob
ids verified, the token sent, allow/ignore patterns, a killed fetch resumed with a Range request,
a stalled endpoint, and the model's shape read from config.json and the safetensors header."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from kubemaas_runtime.llm.loader import load_hf
from kubemaas_testbed.llm_models import num_parameters
from kubemaas_testbed.model_servers import HfEndpoint
from tests.helpers import wait_for

from .fetch_helpers import Fetch, run_fetch, workers_of

REPO_ID = "kubemaas/tiny-llama"


def hf_env(endpoint: HfEndpoint, tmp_path: Path, token: str | None = None) -> dict[str, str]:
    env = {"HF_ENDPOINT": endpoint.url, "HF_HOME": str(tmp_path / "hf-home")}
    if token:
        env["HF_TOKEN"] = token
    return env


def test_fetch_the_tiny_llm(tiny_llama: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with HfEndpoint(tiny_llama, REPO_ID, revisions=("main", "v1")) as ep:
        rc, report, fetch = run_fetch(
            ["--source", f"hf://{REPO_ID}", "--revision", "v1", "--dest", str(dest),
             "--progress-interval", "0.1"], hf_env(ep, tmp_path, token="hf_secret"))
        assert rc == 0, fetch.stderr
        # the token goes to the endpoint, not to the CDN its LFS files are redirected to
        seen = {(r["server"], r["file"], r["authorization"]) for r in ep.responses}
        assert ("cdn", "model.safetensors", None) in seen
        assert {a for server, _, a in seen if server == "origin"} == {"Bearer hf_secret"}
    assert report["revision"] == ep.commit  # the tag, resolved to its commit
    names = sorted(p.name for p in tiny_llama.iterdir())
    assert sorted(f["path"] for f in report["files"]) == names
    for f in report["files"]:
        data = (tiny_llama / f["path"]).read_bytes()
        assert (dest / f["path"]).read_bytes() == data
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
    params = num_parameters(tiny_llama)
    config = json.loads((tiny_llama / "config.json").read_text())
    assert report["shape"] == {
        "architecture": "LlamaForCausalLM", "parameters": params, "weightBytes": params * 4,
        "numLayers": 4, "hiddenSize": 128, "numAttentionHeads": 4, "numKeyValueHeads": 2,
        "headDim": 32, "maxPositionEmbeddings": 2048,
        "dtype": config.get("torch_dtype") or config.get("dtype") or "float32"}
    assert load_hf(dest, device="cpu").model_type == "llama"  # the runtime loads what came


def test_patterns_revisions_and_checksums(tiny_llama: Path, tmp_path: Path) -> None:
    with HfEndpoint(tiny_llama, REPO_ID) as ep:
        env = hf_env(ep, tmp_path)
        rc, report, fetch = run_fetch(["--source", f"hf://{REPO_ID}", "--dest",
                                       str(tmp_path / "json"), "--include", "*.json",
                                       "--exclude", "tokenizer*"], env)
        assert rc == 0, fetch.stderr
        assert sorted(f["path"] for f in report["files"]) == ["config.json",
                                                              "generation_config.json"]
        rc, report, fetch = run_fetch(["--source", f"hf://{REPO_ID}", "--revision", ep.commit,
                                       "--dest", str(tmp_path / "pinned"), "--include",
                                       "config.json"], env)
        assert rc == 0 and report["revision"] == ep.commit, fetch.stderr
        rc, report, _ = run_fetch(["--source", f"hf://{REPO_ID}", "--revision", "nope",
                                   "--dest", str(tmp_path / "x")], env)
        assert rc == 1 and report["reason"] == "NotFound", report
        rc, report, _ = run_fetch(["--source", "hf://kubemaas/other", "--dest",
                                   str(tmp_path / "x")], env)
        assert rc == 1 and report["reason"] == "NotFound", report

        # what the Hub says about a file is checked: the LFS sha256 and the git blob id
        ep.files["model.safetensors"]["lfs"]["sha256"] = "a" * 64
        ep.files["config.json"]["blobId"] = "b" * 40
        rc, report, _ = run_fetch(["--source", f"hf://{REPO_ID}", "--dest",
                                   str(tmp_path / "lfs"), "--include", "*.safetensors"], env)
        assert (rc, report["reason"], report["algorithm"], report["expected"]) == (
            1, "ChecksumMismatch", "sha256", "a" * 64)
        rc, report, _ = run_fetch(["--source", f"hf://{REPO_ID}", "--dest",
                                   str(tmp_path / "git"), "--include", "config.json"], env)
        assert (rc, report["reason"], report["algorithm"], report["expected"]) == (
            1, "ChecksumMismatch", "git-sha1", "b" * 40)


def test_killed_half_way_resumes(tiny_llama: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    weights = "model.safetensors"
    size = (tiny_llama / weights).stat().st_size
    with HfEndpoint(tiny_llama, REPO_ID) as ep:
        env = hf_env(ep, tmp_path)
        ep.rate = 512 << 10  # 512 KiB/s: the 3.4 MB weights take about 7 s
        args = ["--source", f"hf://{REPO_ID}", "--dest", str(dest), "--progress-interval", "0.1"]
        first = Fetch(args, env)
        first.wait_event(lambda e: e["event"] == "progress" and e["bytesDone"] > size // 3)
        first.kill()
        wait_for(lambda: not workers_of(dest), timeout=30, what="the worker to die")
        partial = dest / ".kubemaas-fetch" / "partial" / f"{weights}.part"
        have = partial.stat().st_size
        assert 0 < have < size and not (dest / weights).exists()
        before = len(ep.responses)
        ep.rate = None
        rc, report, fetch = run_fetch(args, env)
        assert rc == 0, fetch.stderr
        again = [r for r in ep.responses[before:] if r["file"] == weights]
        # one ranged GET, at the content address the Hub redirected to, for the rest only
        assert [(r["server"], r["range"], r["sent"]) for r in again] == [
            ("cdn", f"bytes={have}-", size - have)]
    assert (dest / weights).read_bytes() == (tiny_llama / weights).read_bytes()
    assert {f["path"]: f["sha256"] for f in report["files"]}[weights] == \
        hashlib.sha256((tiny_llama / weights).read_bytes()).hexdigest()


def test_stalled_endpoint(tiny_llama: Path, tmp_path: Path) -> None:
    with HfEndpoint(tiny_llama, REPO_ID) as ep:
        ep.stall_after = 100_000
        rc, report, fetch = run_fetch(
            ["--source", f"hf://{REPO_ID}", "--dest", str(tmp_path / "d"), "--include",
             "*.safetensors", "--stall-timeout", "2", "--retries", "0"],
            hf_env(ep, tmp_path), timeout=60)
    assert rc == 1, fetch.stderr
    assert report["reason"] == "Stalled" and report["attempts"] == 1, report
    assert report["durationSeconds"] < 2 + 20


def test_the_endpoint_is_what_huggingface_hub_expects(tiny_llama: Path, tmp_path: Path) -> None:
    """The fixture itself, checked by the library's own snapshot_download (HEAD, tree API,
    resolve with X-Repo-Commit/ETag/X-Linked-*)."""
    code = ("import sys; from huggingface_hub import snapshot_download; "
            f"print(snapshot_download({REPO_ID!r}, local_dir=sys.argv[1]))")
    with HfEndpoint(tiny_llama, REPO_ID) as ep:
        env = {**hf_env(ep, tmp_path), "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PATH": "/usr/bin"}
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "snap")], env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for path in tiny_llama.iterdir():
        assert (tmp_path / "snap" / path.name).read_bytes() == path.read_bytes()


def _saved_configs(root: Path) -> dict[str, Path]:
    """config.json as transformers' config classes write it (save_pretrained), small shapes."""
    from transformers import (
        Gemma2Config,
        Gemma3Config,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )
    small = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16}
    configs = {
        "mistral": MistralConfig(num_hidden_layers=4, sliding_window=256, **small),
        "gemma2": Gemma2Config(num_hidden_layers=6, sliding_window=256, **small),
        "gemma3": Gemma3Config(text_config={"num_hidden_layers": 12, "sliding_window": 512,
                                            **small}),
        "qwen2": Qwen2Config(num_hidden_layers=8, use_sliding_window=True, sliding_window=128,
                             max_window_layers=5, **small),
        "qwen2-off": Qwen2Config(num_hidden_layers=8, **small),
        "llama": LlamaConfig(num_hidden_layers=4, sliding_window=256, **small),
    }
    dirs = {}
    for name, config in configs.items():
        config.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


def test_the_cache_pod_records_the_sliding_window(tmp_path: Path) -> None:
    """The window and the layers within it, as transformers defines them: every layer for
    Mistral, every other for Gemma 2, 5 of 6 for Gemma 3 (its text_config), Qwen2's layers from
    max_window_layers on when use_sliding_window; none for a Llama config's sliding_window."""
    from kubemaas_runtime.fetch.shape import read_shape

    dirs = _saved_configs(tmp_path / "models")
    want = {"mistral": (256, 4), "gemma2": (256, 3), "gemma3": (512, 10), "qwen2": (128, 3),
            "qwen2-off": None, "llama": None}
    for name, window in want.items():
        got = read_shape(dirs[name], ["config.json"])
        assert got is not None, name
        recorded = (got.get("slidingWindow"), got.get("slidingWindowLayers"))
        assert recorded == (window or (None, None)), (name, got)
    # and through the cache pod's own process, from an hf:// endpoint
    with HfEndpoint(dirs["gemma3"], "kubemaas/tiny-gemma3") as ep:
        rc, report, fetch = run_fetch(["--source", "hf://kubemaas/tiny-gemma3", "--dest",
                                       str(tmp_path / "dest")], hf_env(ep, tmp_path))
    assert rc == 0, fetch.stderr
    assert (report["shape"]["slidingWindow"], report["shape"]["slidingWindowLayers"]) == (512, 10)
    assert report["shape"]["numLayers"] == 12
