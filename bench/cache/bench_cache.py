"""Download throughput of the model cache's downloader (``python -m kubemaas_runtime.fetch``)
against local servers on 127.0.0.1, beside a plain single-stream download.

    .venv/bin/python bench/cache/bench_cache.py [--files 8] [--file-mib 40] [--repeat 2]
        [--skip-s3] [--no-docs]
    .venv/bin/python bench/cache/bench_cache.py --pod-start [--pad-mib 256] [--repeat 2]
        [--rate-mib 0] [--no-docs]     # pod start with and without the cache: pod_start.py

The script generates ``--files`` files of ``--file-mib`` MiB (incompressible bytes) and serves
them three ways: a plain HTTP folder with an ``index.json`` (kubemaas_testbed.model_servers
.FileServer), a Hugging Face-compatible endpoint (HfEndpoint, ``HF_ENDPOINT``) and moto's
S3-compatible server (in its cached side virtualenv, as the tests start it). For each, the
downloader fetches everything with ``--parallel 1`` and ``--parallel 8``; the floor is ``curl``
fetching the same files one after another over one connection each (what a user gets from a
plain single-stream download), and, as the like-for-like floor, that plus ``sha256sum`` of what
it wrote (the downloader hashes every byte). The clock covers the whole command: start-up, listing,
download, sha256 of every byte, fsync, rename, manifest. Destinations live on /dev/shm when it
has room (so the disk does not set the pace), the served files too.

Figures go to stdout, to ``bench/results/cache.json`` and, as a table with the command and the
machine's load (``uptime``), to ``docs/model-cache-benchmark.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubemaas_testbed.model_servers import FileServer, HfEndpoint, write_index

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "cache.json"
DOC = ROOT / "docs" / "model-cache-benchmark.md"
MIB = 1 << 20
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def generate(root: Path, files: int, file_mib: int) -> list[Path]:
    """Incompressible, reproducible bytes (sha256 in counter mode), ``files`` x ``file_mib``."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "num_hidden_layers": 16,
        "num_attention_heads": 16, "num_key_value_heads": 8, "torch_dtype": "bfloat16"}))
    out = [root / "config.json"]
    block = b"".join(hashlib.sha256(i.to_bytes(8, "little")).digest() for i in range(32768))
    for n in range(files):
        path = root / f"model-{n + 1:05d}-of-{files:05d}.safetensors"
        with path.open("wb") as fh:
            for i in range(file_mib):
                fh.write(hashlib.sha256(f"{n}/{i}".encode()).digest() + block[32:])
        out.append(path)
    write_index(root)
    return out


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return took


def fetch_cmd(source: str, dest: Path, parallel: int) -> list[str]:
    return [sys.executable, "-m", "kubemaas_runtime.fetch", "--source", source, "--dest",
            str(dest), "--parallel", str(parallel), "--progress-interval", "5", "--retries", "0"]


def curl_cmd(urls: list[str], dest: Path, *extra: str) -> list[str]:
    """One curl process, the files one after another (one stream at a time)."""
    cmd = ["curl", "-sS", "--fail", *extra]
    for i, url in enumerate(urls):
        cmd += ["-o", str(dest / f"{i}"), url]
    return cmd


@contextmanager
def s3_with_files(files: list[Path], base: Path) -> Iterator[str]:
    from tests.runtime.fetch_helpers import moto_server, s3_upload

    with moto_server() as (endpoint, python):
        items: list[dict[str, Any]] = [{"bucket_only": True, "bucket": "models"}]
        items += [{"bucket": "models", "key": f"llm/{p.name}", "path": str(p)} for p in files]
        s3_upload(python, endpoint, items)
        yield endpoint


def measure(name: str, run: Callable[[Path], float], scratch: Path, repeat: int,
            nbytes: int) -> dict[str, Any]:
    times = []
    for i in range(repeat):
        dest = scratch / f"{name.replace(' ', '_')}-{i}"
        dest.mkdir(parents=True)
        times.append(run(dest))
        shutil.rmtree(dest)
    best, median = min(times), statistics.median(times)
    row = {"case": name, "seconds": [round(t, 3) for t in times],
           "bestMBps": round(nbytes / best / 1e6, 1), "medianMBps": round(nbytes / median / 1e6, 1)}
    log(f"{name:34s} best {row['bestMBps']:8.1f} MB/s  median {row['medianMBps']:8.1f} MB/s  "
        f"({', '.join(f'{t:.2f}' for t in times)} s)")
    return row


def write_doc(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    lines = [
        "# Model cache downloader: throughput",
        "",
        "Generated by `bench/cache/bench_cache.py`; do not edit by hand. Method and caveats:",
        "[model-cache.md](model-cache.md#downloader-benchmark).",
        "",
        f"- command: `{meta['command']}`",
        f"- data: {meta['files']} files x {meta['fileMiB']} MiB + config.json = "
        f"{meta['bytes'] / 1e6:.0f} MB, served from and written to `{meta['scratch']}`",
        f"- machine: {meta['cpus']} CPUs; load before: `{meta['uptimeBefore']}`; after: "
        f"`{meta['uptimeAfter']}`",
        f"- date: {meta['date']}",
        "",
        "| case | best MB/s | median MB/s | runs (s) |",
        "| --- | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['bestMBps']} | {r['medianMBps']} | "
                     f"{', '.join(str(t) for t in r['seconds'])} |")
    old = DOC.read_text() if DOC.exists() else ""
    kept = old[old.index(POD_START_MARK):] if POD_START_MARK in old else ""
    DOC.write_text("\n".join(lines) + "\n" + ("\n" + kept if kept else ""))


POD_START_MARK = "<!-- pod start: bench/cache/bench_cache.py --pod-start -->"


def write_pod_start_doc(result: dict[str, Any], command: str) -> None:
    """Replace the pod-start section of the benchmark page (the throughput part stays)."""
    from pod_start import table_text

    rate = (f"paced at {result['rateMiB']:g} MiB/s per response" if result["rateMiB"]
            else "unpaced (the node's bridge on this machine)")
    intro = [
        POD_START_MARK,
        "## Pod start with and without the cache (real node)",
        "",
        "`kubectl apply` of a ModelDeployment -> its first correct inference (first replica), "
        "and `kubectl scale` to 2 -> the second replica's first correct inference, on the real "
        "node (real kubelet and containerd). download: the pod downloads the model itself "
        "(http, sha256 pinned); cache: it mounts a node ModelCache that is already Ready; "
        "autoCache: the model asks for a cache that does not exist yet (created, filled, then "
        "the pod starts; deleted with the model between repeats). Method: "
        "`bench/cache/pod_start.py`. Each run adds a section (a run with the same command "
        "replaces its own).",
        "",
    ]
    run = [
        f"### `{command}`",
        "",
        f"- model: {result['bytes'] / 1e6:.0f} MB ONNX file (y = 2x + 1 and an unused "
        f"initializer), served from the node's bridge address, {rate}",
        f"- the ModelCache used by `cache` was filled in {result['cacheFillSeconds']:.1f} s",
        f"- load before: `{result['uptimeBefore']}`; after: `{result['uptimeAfter']}`",
        f"- date: {result['date']}",
        "",
        table_text(result),
        "",
        "Each run (s): " + "; ".join(
            f"{r['mode']} #{r['repeat']} {r['first']:.1f}"
            + (f"/{r['second']:.1f}" if r["second"] is not None else "")
            + f" (load {r['load1']:.1f})" for r in result["rows"]),
        "",
    ]
    old = DOC.read_text() if DOC.exists() else ""
    if POD_START_MARK not in old:
        DOC.write_text(old + "\n" + "\n".join(intro + run))
        return
    head, section = old.split(POD_START_MARK, 1)
    runs = ["### " + part for part in section.split("\n### ")[1:]]
    runs = [r for r in runs if not r.startswith(f"### `{command}`")]
    DOC.write_text(head + "\n".join(intro) + "\n" + "\n".join(
        [r.rstrip("\n") + "\n" for r in runs] + ["\n".join(run)]))


def pod_start_main(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from pod_start import measure, table_text

    result = measure(a.pad_mib, a.repeat, a.rate_mib)
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = " ".join(["bench/cache/bench_cache.py", *sys.argv[1:]])
    out = RESULTS.parent / "cache-pod-start.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, **result}, indent=1))
    print(table_text(result))
    log(f"load: {result['uptimeAfter']}")
    if not a.no_docs:
        write_pod_start_doc(result, command)
        log(f"wrote {DOC.relative_to(ROOT)}")


def _measure_http(src: Path, files: list[Path], scratch: Path, repeat: int, nbytes: int,
                  env: dict[str, str]) -> list[dict[str, Any]]:
    """A plain HTTP folder: curl one file at a time (with and without sha256sum after), and
    the downloader with 1 and 8 streams."""
    rows = []
    with FileServer(src.parent) as server:
        urls = [f"{server.url}/llm/{f.name}" for f in files]
        rows.append(measure("http: curl, one file at a time", lambda d: timed(
            curl_cmd(urls, d)), scratch, repeat, nbytes))
        rows.append(measure("http: curl, then sha256sum", lambda d: timed(
            curl_cmd(urls, d)) + timed(["sha256sum", *map(str, sorted(d.iterdir()))]),
            scratch, repeat, nbytes))
        for n in (1, 8):
            rows.append(measure(f"http: fetch --parallel {n}", lambda d, n=n: timed(
                fetch_cmd(f"{server.url}/llm/", d, n), env), scratch, repeat, nbytes))
    return rows


def _measure_hf(src: Path, base: Path, scratch: Path, repeat: int, nbytes: int,
                env: dict[str, str]) -> list[dict[str, Any]]:
    """A Hugging Face-compatible endpoint: the downloader with 1 and 8 streams."""
    rows = []
    hf_src = base / "hf"
    shutil.copytree(src, hf_src, ignore=shutil.ignore_patterns("index.json"))
    with HfEndpoint(hf_src, "bench/llm") as ep:
        hf_env = {**env, "HF_ENDPOINT": ep.url, "HF_HOME": str(base / "hf-home")}
        for n in (1, 8):
            rows.append(measure(f"hf: fetch --parallel {n}", lambda d, n=n: timed(
                fetch_cmd("hf://bench/llm", d, n), hf_env), scratch, repeat, nbytes))
    return rows


def _measure_s3(files: list[Path], base: Path, scratch: Path, repeat: int, nbytes: int,
                env: dict[str, str]) -> list[dict[str, Any]]:
    """moto's S3 server: curl with SigV4 one file at a time, the downloader with 1 and 8
    streams."""
    rows = []
    with s3_with_files(files, base) as endpoint:
        urls = [f"{endpoint}/models/llm/{f.name}" for f in files]
        s3_env = {**env, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                  "AWS_ENDPOINT_URL_S3": endpoint}
        sigv4 = ("--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "bench:bench")
        rows.append(measure("s3 (moto): curl, one file at a time", lambda d: timed(
            curl_cmd(urls, d, *sigv4)), scratch, repeat, nbytes))
        for n in (1, 8):
            rows.append(measure(f"s3 (moto): fetch --parallel {n}", lambda d, n=n: timed(
                fetch_cmd("s3://models/llm/", d, n), s3_env), scratch, repeat, nbytes))
    return rows


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--file-mib", type=int, default=40)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--skip-s3", action="store_true")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--pod-start", action="store_true",
                   help="instead: pod start with and without the cache on the real node "
                   "(bench/cache/pod_start.py)")
    p.add_argument("--pad-mib", type=int, default=256, help="--pod-start: the model's size")
    p.add_argument("--rate-mib", type=float, default=0.0,
                   help="--pod-start: pace each response of the model server (0: unpaced)")
    return p.parse_args()


def main() -> None:
    a = _parse_args()
    if a.pod_start:
        pod_start_main(a)
        return
    shm = Path("/dev/shm")
    room = shutil.disk_usage(shm).free if shm.is_dir() else 0
    need = a.files * a.file_mib * MIB * 3
    base = Path(tempfile.mkdtemp(prefix="kubemaas-bench-cache-",
                                 dir=str(shm) if room > 2 * need else None))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "runtime"), str(ROOT / "hack"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        src = base / "srv" / "llm"
        files = generate(src, a.files, a.file_mib)
        nbytes = sum(f.stat().st_size for f in files)
        log(f"{len(files)} files, {nbytes / 1e6:.0f} MB in {base}")
        before = uptime()
        log(before)
        scratch = base / "dest"
        rows = _measure_http(src, files, scratch, a.repeat, nbytes, env)
        rows += _measure_hf(src, base, scratch, a.repeat, nbytes, env)
        if not a.skip_s3:
            rows += _measure_s3(files, base, scratch, a.repeat, nbytes, env)
        after = uptime()
        log(after)
        meta = {"command": " ".join(["bench/cache/bench_cache.py", *sys.argv[1:]]),
                "files": a.files, "fileMiB": a.file_mib, "bytes": nbytes,
                "scratch": "/dev/shm" if str(base).startswith("/dev/shm") else str(base.parent),
                "cpus": os.cpu_count(), "uptimeBefore": before, "uptimeAfter": after,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        if not a.no_docs:
            write_doc(rows, meta)
            log(f"wrote {DOC.relative_to(ROOT)}")
    finally:
        shutil.rmtree(base, ignore_errors=True)

if __name__ == "__main__":
    main()
