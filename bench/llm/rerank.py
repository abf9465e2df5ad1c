"""Reranking served (``/rerank`` of a cross-encoder) against the model's own batched forward in
process.

    .venv/bin/python bench/llm/rerank.py --size minilm --concurrency 1,4,16 --requests 100

The runtime serves a random-weight BERT cross-encoder of the testbed's (``minilm``:
ms-marco-MiniLM-L6's shape, ~22 M parameters; ``tiny``: ~0.2 M) on core 0 (one torch thread);
a closed loop of ``c`` clients on core 1 sends rerank requests of one query (``--query-tokens``
tokens) and ``--docs`` documents (``--doc-tokens`` tokens each; words of the tokenizer's corpus,
fixed seed) and measures pairs/s and the request latency p50/p99. Then, the server stopped, the
same pairs run in this process on core 0 through transformers' model (the tokenizer's pairs,
padded, as sentence-transformers' CrossEncoder runs them) in batches of ``c`` requests' pairs:
the limit a server could reach. No other reranking server runs here (none of the LLM peers'
virtualenvs, bench/llm/envs.py, serves this model's /rerank).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from embed import PORT, wait_ready  # bench/llm/embed.py (this script's directory)

REPO = Path(__file__).resolve().parents[2]


def make_texts(tokenizer: Any, count: int, tokens: int, rng: random.Random) -> list[str]:
    from kubemaas_testbed.llm_models import corpus_text

    words = corpus_text().split()
    texts = []
    for _ in range(count):
        text = ""
        while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
            text = f"{text} {rng.choice(words)}".strip()
        texts.append(text)
    return texts


def start(model_dir: Path, max_num_seqs: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "runtime"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "kubemaas_runtime", "--format", "hf",
         "--model-uri", str(model_dir), "--name", "m", "--host", "127.0.0.1", "--port",
         str(PORT), "--intra-op-threads", "1", "--max-num-seqs", str(max_num_seqs),
         "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def closed_loop(session: Any, requests: list[tuple[str, list[str]]], concurrency: int
                      ) -> tuple[float, list[float]]:
    """pairs/s and the latencies (s) of the requests from ``concurrency`` clients."""
    queue = list(requests)
    latencies: list[float] = []

    async def client() -> None:
        while queue:
            query, docs = queue.pop()
            t0 = time.perf_counter()
            async with session.post(f"http://127.0.0.1:{PORT}/rerank",
                                    json={"model": "m", "query": query, "documents": docs}
                                    ) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    pairs = sum(len(docs) for _, docs in requests)
    return pairs / (time.perf_counter() - t0), latencies


async def served(model_dir: Path, requests: list[tuple[str, list[str]]], levels: list[int],
                 max_num_seqs: int) -> dict[int, Any]:
    import aiohttp

    proc = start(model_dir, max_num_seqs)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session)
            await closed_loop(session, requests[:8], 4)  # warm-up
            return {c: await closed_loop(session, requests, c) for c in levels}
    finally:
        proc.terminate()
        proc.wait(30)


def limit(model_dir: Path, requests: list[tuple[str, list[str]]], levels: list[int]
          ) -> dict[int, float]:
    """Pairs/s of transformers' model over the pairs of c requests at a time, on the
    server's core."""
    import torch
    import transformers

    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), attn_implementation="sdpa").eval()
    out = {}
    for c in levels:
        t0 = time.perf_counter()
        for i in range(0, len(requests), c):
            group = requests[i:i + c]
            queries = [q for q, docs in group for _ in docs]
            docs = [d for _, ds in group for d in ds]
            batch = tok(queries, text_pair=docs, padding=True, return_tensors="pt")
            with torch.inference_mode():
                torch.sigmoid(model(**batch).logits)
        out[c] = sum(len(docs) for _, docs in requests) / (time.perf_counter() - t0)
    return out


def write_json(path: Path, title: str, points: list[dict[str, float]]) -> None:
    import json

    path.write_text(json.dumps({"title": title, "unit": "pairs/s", "points": points,
                                "load_average": os.getloadavg()[0]}, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="minilm", choices=("tiny", "minilm"))
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--json", type=Path, help="also write the figures here (for the plot: "
                        "bench/llm/pooling_plot.py)")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--query-tokens", type=int, default=12)
    parser.add_argument("--doc-tokens", type=int, default=48)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    import transformers

    from kubemaas_testbed.llm_classifiers import build_encoder

    os.sched_setaffinity(0, {1})  # the clients' core
    model_dir = build_encoder(Path(tempfile.mkdtemp(prefix="kubemaas-rerank-")) / "m", "bert",
                              size=args.size)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    rng = random.Random(0)
    queries = make_texts(tok, args.requests, args.query_tokens, rng)
    docs = make_texts(tok, args.requests * args.docs, args.doc_tokens, rng)
    requests = [(q, docs[i * args.docs:(i + 1) * args.docs]) for i, q in enumerate(queries)]
    load0 = os.getloadavg()[0]
    # the server may batch every pair in flight: c requests' documents
    figures = asyncio.run(served(model_dir, requests, levels, max(levels) * args.docs))
    limits = limit(model_dir, requests, levels)
    title = (f"rerank: {args.size} BERT cross-encoder, {args.docs} documents of "
             f"{args.doc_tokens} tokens a request")
    print(f"{args.size} BERT cross-encoder, {args.requests} rerank requests per level of a "
          f"{args.query_tokens}-token query and {args.docs} documents of {args.doc_tokens} "
          f"tokens; load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after")
    print("| c | served pairs/s | latency p50 / p99 ms | in-process pairs/s (c requests a "
          "batch) | served / in-process |")
    print("|---|---|---|---|---|")
    for c in levels:
        rate, lat = figures[c]
        lat_ms = sorted(1e3 * x for x in lat)
        p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))]
        print(f"| {c} | {rate:,.1f} | {statistics.median(lat_ms):.2f} / {p99:.2f} | "
              f"{limits[c]:,.1f} | {rate / limits[c]:.2f} |")
    if args.json:
        write_json(args.json, title, [
            {"concurrency": c, "served": figures[c][0], "limit": limits[c],
             "latency_p50_ms": 1e3 * statistics.median(figures[c][1])} for c in levels])
    return 0


if __name__ == "__main__":
    sys.exit(main())
