"""Embeddings served (``--runner pooling``) against the model's own batched forward in process.

    .venv/bin/python bench/llm/embed.py --size tiny --concurrency 1,4,16 --requests 400

The runtime serves a random-weight Llama of the testbed's on core 0 (one torch thread); a
closed loop of ``c`` clients on core 1 sends one input per request (``--tokens`` tokens, words
of the tokenizer's corpus, fixed seed) and measures inputs/s and the latency p50/p99. Then, the
server stopped, the same inputs run in this process on core 0 through the model's forward in
batches of ``c`` (``AutoModel``, one thread, the same padding): the limit a server could reach.
No other embedding server runs here (this machine holds no peer's environment; the LLM peers'
virtualenvs are built by bench/llm/envs.py and none of them serves embeddings of this model).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PORT = 18431


def make_inputs(tokenizer: Any, count: int, tokens: int) -> list[str]:
    from kubemaas_testbed.llm_models import corpus_text

    words = corpus_text().split()
    rng = random.Random(0)
    texts = []
    for _ in range(count):
        text = ""
        while len(tokenizer(text)["input_ids"]) < tokens:
            text = f"{text} {rng.choice(words)}".strip()
        texts.append(text)
    return texts


def start(model_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "runtime"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "kubemaas_runtime", "--format", "hf",
         "--runner", "pooling", "--model-uri", str(model_dir), "--name", "m", "--host",
         "127.0.0.1", "--port", str(PORT), "--intra-op-threads", "1", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_ready(session: Any) -> None:
    for _ in range(600):
        try:
            async with session.get(f"http://127.0.0.1:{PORT}/health") as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the runtime did not get ready")


async def closed_loop(session: Any, bodies: list[dict[str, Any]], concurrency: int,
                      path: str = "/v1/embeddings", units: int | None = None
                      ) -> tuple[float, list[float]]:
    """``units``/s (inputs, pairs: by default one a request) and the latencies (s) of the
    requests from ``concurrency`` clients, each POSTing its next body to ``path``."""
    queue = list(bodies)
    latencies: list[float] = []

    async def client() -> None:
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            async with session.post(f"http://127.0.0.1:{PORT}{path}", json=body) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return (units or len(bodies)) / (time.perf_counter() - t0), latencies


async def served(proc: subprocess.Popen[bytes], bodies: list[dict[str, Any]],
                 levels: list[int], path: str = "/v1/embeddings", units: int | None = None
                 ) -> dict[int, Any]:
    """Each level's closed loop against the started runtime ``proc`` (stopped after)."""
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session)
            await closed_loop(session, bodies[:32], 4, path)  # warm-up
            return {c: await closed_loop(session, bodies, c, path, units) for c in levels}
    finally:
        proc.terminate()
        proc.wait(30)


def limit(model_dir: Path, texts: list[str], levels: list[int]) -> dict[int, float]:
    """Inputs/s of the model's own forward over batches of c inputs, on the server's core."""
    import torch
    import transformers

    from kubemaas_runtime.llm.pooling import pool

    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModel.from_pretrained(str(model_dir),
                                                   attn_implementation="sdpa").eval()
    out = {}
    for c in levels:
        t0 = time.perf_counter()
        for i in range(0, len(texts), c):
            batch = tok(texts[i:i + c], padding=True, return_tensors="pt")
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
                pool(hidden, batch["attention_mask"].sum(1).tolist(), "LAST")
        out[c] = len(texts) / (time.perf_counter() - t0)
    return out


def report(levels: list[int], figures: dict[int, Any], limits: dict[int, float], unit: str,
           title: str, json_path: Path | None) -> None:
    """The table (served against in-process, per concurrency) and, with ``json_path``, the
    figures bench/llm/pooling_plot.py draws. ``unit``: what is counted (inputs, pairs)."""
    import json

    print(f"| c | served {unit}/s | latency p50 / p99 ms | in-process {unit}/s | "
          "served / in-process |")
    print("|---|---|---|---|---|")
    points = []
    for c in levels:
        rate, lat = figures[c]
        lat_ms = sorted(1e3 * x for x in lat)
        p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))]
        print(f"| {c} | {rate:,.1f} | {statistics.median(lat_ms):.2f} / {p99:.2f} | "
              f"{limits[c]:,.1f} | {rate / limits[c]:.2f} |")
        points.append({"concurrency": c, "served": rate, "limit": limits[c],
                       "latency_p50_ms": statistics.median(lat_ms)})
    if json_path is not None:
        json_path.write_text(json.dumps({"title": title, "unit": f"{unit}/s", "points": points,
                                         "load_average": os.getloadavg()[0]}, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--json", type=Path, help="also write the figures here (for the plot: "
                        "bench/llm/pooling_plot.py)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    import transformers

    from kubemaas_testbed.llm_models import build_llm

    os.sched_setaffinity(0, {1})  # the clients' core
    work = tempfile.mkdtemp(prefix="kubemaas-embed-")
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # the small model is 760 MB
    model_dir = build_llm(Path(work) / "m", size=args.size)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "right"
    texts = make_inputs(tok, args.requests, args.tokens)
    load0 = os.getloadavg()[0]
    figures = asyncio.run(served(start(model_dir), [{"input": t, "model": "m"} for t in texts],
                                 levels))
    limits = limit(model_dir, texts, levels)
    title = f"embeddings: {args.size} Llama, one {args.tokens}-token input a request"
    print(f"{args.size} Llama as an embedding model (last token, normalized), "
          f"{args.requests} requests of one {args.tokens}-token input each per level; "
          f"load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after")
    report(levels, figures, limits, "inputs", title, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
