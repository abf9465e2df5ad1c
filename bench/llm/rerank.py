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
import atexit
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from embed import PORT, report, served  # bench/llm/embed.py (this script's directory)

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
    work = tempfile.mkdtemp(prefix="kubemaas-rerank-")
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    model_dir = build_encoder(Path(work) / "m", "bert", size=args.size)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    rng = random.Random(0)
    queries = make_texts(tok, args.requests, args.query_tokens, rng)
    docs = make_texts(tok, args.requests * args.docs, args.doc_tokens, rng)
    requests = [(q, docs[i * args.docs:(i + 1) * args.docs]) for i, q in enumerate(queries)]
    load0 = os.getloadavg()[0]
    # the server may batch every pair in flight: c requests' documents
    bodies = [{"model": "m", "query": q, "documents": d} for q, d in requests]
    figures = asyncio.run(served(start(model_dir, max(levels) * args.docs), bodies, levels,
                                 "/rerank", sum(len(d) for _, d in requests)))
    limits = limit(model_dir, requests, levels)
    title = (f"rerank: {args.size} BERT cross-encoder, {args.docs} documents of "
             f"{args.doc_tokens} tokens a request")
    print(f"{args.size} BERT cross-encoder, {args.requests} rerank requests per level of a "
          f"{args.query_tokens}-token query and {args.docs} documents of {args.doc_tokens} "
          f"tokens; load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after")
    report(levels, figures, limits, "pairs", title, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
