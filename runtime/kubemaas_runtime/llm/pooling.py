"""Pooling models (vLLM's ``--runner pooling``): embedding models, a transformers base model's
last hidden states pooled into one vector per input, and classifiers (classify.py), one row of
logits per input.

How a model pools is read as vLLM reads it: from the sentence-transformers files beside the
weights (``modules.json``: its ``Pooling`` module's ``config.json`` gives the mode; each
``Dense`` module after it projects the pooled vector, st_dense.py; a ``Normalize`` module,
unit length) or ``--pooler-config``; without either, a decoder model's
embedding is its last token's hidden state, normalized (vLLM's default for decoder models:
Qwen3-Embedding, e5-mistral).

``Embedder`` is the pooling engine: one thread that takes the waiting inputs (at most
``max_num_seqs`` of them, ``max_num_batched_tokens`` padded tokens), runs them as one padded
batch with their attention mask (and token types, for a pair), turns each row into its vector
over its own tokens, and hands the vectors to the event loop. Inputs whose request went away
are dropped before they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import StartupError
from .classify import RowFn
from .worker import EngineThread

log = logging.getLogger("kubemaas.runtime.llm")

POOLING_TYPES = ("LAST", "MEAN", "CLS")
# sentence-transformers' Pooling config keys -> vLLM's pooling types
_ST_MODES = {"pooling_mode_lasttoken": "LAST", "pooling_mode_mean_tokens": "MEAN",
             "pooling_mode_cls_token": "CLS"}
# the sentence-transformers modules served (a module after these would change the vector)
_ST_SERVED = ("Transformer", "Pooling", "Dense", "Normalize")


@dataclass(frozen=True)
class Pooling:
    kind: str = "LAST"
    normalize: bool = True
    source: str = "default"  # where it was read: default, modules.json, --pooler-config
    dense: tuple[str, ...] = ()  # the Dense modules' directories, in order (st_dense.py)


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StartupError(f"{path} cannot be read: {exc}") from None


def sentence_transformers_pooling(model_dir: Path) -> Pooling | None:
    """The pooling the sentence-transformers files describe; None without ``modules.json``."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return None
    modules = _json_file(modules_file)
    if not isinstance(modules, list):
        raise StartupError(f"{modules_file} is not a list of modules")
    types = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules
             if isinstance(m, dict)]
    others = [str(m.get("type", "")) for m in modules if isinstance(m, dict)
              and str(m.get("type", "")).rsplit(".", 1)[-1] not in _ST_SERVED]
    if others:  # a LayerNorm, a WordWeights ...: the vectors would be wrong without it
        raise StartupError(f"{modules_file} has modules that are not served: "
                           f"{', '.join(others)}; served: Transformer, Pooling, Dense, "
                           "Normalize")
    _check_order(modules_file, types)
    normalize = "Normalize" in types
    kind = "LAST"
    dense: list[str] = []
    for module in modules:
        if isinstance(module, dict) and str(module.get("type", "")).endswith(".Dense"):
            dense.append(str(module.get("path", "")))
        if isinstance(module, dict) and str(module.get("type", "")).endswith(".Pooling"):
            kind = _pooling_mode(model_dir, str(module.get("path", "")))
    return Pooling(kind, normalize, "modules.json", tuple(dense))


def _check_order(modules_file: Path, types: list[str]) -> None:
    """The order served: Transformer, Pooling, any Dense, Normalize last (sentence-transformers
    runs the modules in this order; another would be another vector)."""
    rank = {"Transformer": 0, "Pooling": 1, "Dense": 2, "Normalize": 3}
    ranks = [rank[t] for t in types]
    if ranks != sorted(ranks) or types.count("Pooling") > 1 or types.count("Normalize") > 1 \
            or ("Dense" in types and "Pooling" not in types):
        raise StartupError(f"{modules_file}: the modules {', '.join(types)} are not served in "
                           "that order; served: Transformer, Pooling, then any Dense, then "
                           "Normalize")


def _pooling_mode(model_dir: Path, path: str) -> str:
    config = _json_file(model_dir / path / "config.json")
    modes = [mode for key, mode in _ST_MODES.items() if config.get(key)]
    others = [k for k, v in config.items()
              if k.startswith("pooling_mode_") and v and k not in _ST_MODES]
    if len(modes) != 1 or others:
        raise StartupError(f"{model_dir}: the Pooling module asks for "
                           f"{modes + others or 'no mode'}; served: exactly one of "
                           "last token, mean of the tokens, first (CLS) token")
    return modes[0]


def _st_config(model_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The sentence-transformers config (``sentence_bert_config.json`` or its sibling for
    another family) and its path; None without one."""
    for path in sorted(model_dir.glob("sentence_*_config.json")):
        doc = _json_file(path)
        if isinstance(doc, dict):
            return path, doc
    return None


def sentence_transformers_max_len(model_dir: Path) -> int | None:
    """Its ``max_seq_length``: the length the model was trained to embed, which vLLM takes as
    the model's length (sentence-transformers cuts a longer text to it)."""
    found = _st_config(model_dir)
    value = found[1].get("max_seq_length") if found else None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise StartupError(f"{found and found[0]}: max_seq_length must be a positive integer")
    return value


def sentence_transformers_lower_case(model_dir: Path) -> bool:
    """Its ``do_lower_case``: sentence-transformers (and vLLM) lower-case each text before the
    tokenizer reads it."""
    found = _st_config(model_dir)
    value = found[1].get("do_lower_case", False) if found else False
    if not isinstance(value, bool):
        raise StartupError(f"{found and found[0]}: do_lower_case must be true or false")
    return value


def resolve_pooling(model_dir: Path, pooler_config: str | None,
                    default: Pooling | None = None) -> Pooling:
    """--pooler-config (vLLM's JSON: pooling_type, normalize) over the model's own files, over
    ``default`` (the architecture's)."""
    found = sentence_transformers_pooling(model_dir) or default or Pooling()
    if not pooler_config:
        return found
    try:
        doc = json.loads(pooler_config)
    except ValueError as exc:
        raise StartupError(f"--pooler-config is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) - {"pooling_type", "normalize"}:
        raise StartupError("--pooler-config takes a JSON object with pooling_type and "
                           "normalize")
    kind = str(doc.get("pooling_type", found.kind)).upper()
    if kind not in POOLING_TYPES:
        raise StartupError(f"--pooler-config pooling_type {kind!r} is not one of "
                           f"{', '.join(POOLING_TYPES)}")
    normalize = doc.get("normalize", found.normalize)
    if not isinstance(normalize, bool):
        raise StartupError("--pooler-config normalize must be true or false")
    return Pooling(kind, normalize, "--pooler-config", found.dense)


def pool(hidden: torch.Tensor, lengths: list[int], kind: str) -> torch.Tensor:
    """[B, T, H] right-padded hidden states -> [B, H] float32, one row per input (not
    normalized: the endpoint normalizes after any cut to fewer dimensions)."""
    rows = []
    for i, n in enumerate(lengths):
        states = hidden[i, :n].float()
        rows.append(states[-1] if kind == "LAST" else states.mean(0) if kind == "MEAN"
                    else states[0])
    return torch.stack(rows)


class PooledRows:
    """An embedding model's rows: its last hidden states pooled by ``kind``, then through
    ``dense`` (sentence-transformers' Dense modules, float32) when there is one. ``tokens``:
    the same forward, and for the rows flagged each of its tokens' hidden states (through
    ``dense``) instead of the pooled vector (vLLM's ``token_embed``)."""

    def __init__(self, model: Any, kind: str, dense: torch.nn.Module | None = None) -> None:
        self.model, self.kind, self.dense = model, kind, dense

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None,
                 lengths: list[int]) -> torch.Tensor:
        rows = pool(self.model(input_ids=ids, attention_mask=mask).last_hidden_state, lengths,
                    self.kind)
        return rows if self.dense is None else self.dense(rows)

    def tokens(self, ids: torch.Tensor, mask: torch.Tensor, lengths: list[int],
               flags: list[bool]) -> list[torch.Tensor]:
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        rows = pool(hidden, lengths, self.kind)
        out = [hidden[i, :n].float() if flag else rows[i]
               for i, (n, flag) in enumerate(zip(lengths, flags, strict=True))]
        return out if self.dense is None else [self.dense(row) for row in out]



class Overloaded(Exception):
    """The embedder holds as many inputs as it may (the caller answers 429)."""


@dataclass
class _Item:
    ids: list[int]
    types: list[int] | None  # token types (a pair, for an encoder that reads them)
    future: asyncio.Future[torch.Tensor]
    per_token: bool = False  # each token's row ([tokens, H]) instead of the pooled one


class Embedder(EngineThread):
    """``run`` makes a padded batch's rows (PooledRows, classify.classifier_rows; each
    token's with token_classify.TokenRows); ``pooling``: how an embedding model pools (None
    for a classifier)."""

    def __init__(self, run: RowFn, pooling: Pooling | None, device: torch.device,
                 max_num_seqs: int, max_num_batched_tokens: int, max_queue: int,
                 pad_id: int = 0) -> None:
        super().__init__("kubemaas-llm-embedder")
        self.run, self.pooling, self.device, self.pad_id = run, pooling, device, pad_id
        self.max_num_seqs, self.max_tokens = max_num_seqs, max_num_batched_tokens
        self.max_queue = max_queue
        self._queue: deque[_Item] = deque()
        self._running: list[_Item] = []
        self.num_running = 0  # read by /metrics

    @property
    def num_waiting(self) -> int:
        return len(self._queue)

    @property
    def per_token(self) -> bool:
        """Whether it can answer each token's row (an embedding model's hidden states)."""
        return isinstance(self.run, PooledRows)

    async def embed(self, inputs: list[list[int]], types: list[list[int]] | None = None,
                    per_token: bool = False) -> list[torch.Tensor]:
        """One vector per input (float32; ``per_token``: one per token, [tokens, H]);
        Overloaded when the queue is full. A request of
        more inputs than the queue holds is taken when nothing else waits or runs (a rerank of
        many documents is one request: refusing it would refuse it for good)."""
        loop = asyncio.get_running_loop()
        with self._wake:
            busy = len(self._queue) + self.num_running
            if busy and busy + len(inputs) > self.max_queue:
                raise Overloaded(f"{len(self._queue) + self.num_running} inputs are waiting "
                                 f"or running, the limit is {self.max_queue}")
            items = [_Item(ids, types[i] if types else None, loop.create_future(), per_token)
                     for i, ids in enumerate(inputs)]
            self._queue.extend(items)
            self._wake.notify()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:  # the client went away: the worker drops the rest
                item.future.cancel()

    def embed_sync(self, inputs: list[list[int]]) -> torch.Tensor:
        """In the calling thread (tests, warm-up): one padded batch."""
        vectors = self._forward(inputs, [None] * len(inputs))
        assert isinstance(vectors, torch.Tensor)
        return vectors

    def _take(self) -> list[_Item] | None:
        with self._wake:
            while not self._stopped and not self._queue:
                self._wake.wait()
            if self._stopped:
                return None
            batch: list[_Item] = []
            longest = 0
            while self._queue and len(batch) < self.max_num_seqs:
                item = self._queue[0]
                if item.future.done():  # cancelled while waiting
                    self._queue.popleft()
                    continue
                width = max(longest, len(item.ids))
                if batch and width * (len(batch) + 1) > self.max_tokens:
                    break
                longest = width
                batch.append(self._queue.popleft())
            self.num_running = len(batch)
            self._running = batch
            return batch

    def fail_all(self, exc: Exception) -> None:
        """On the event loop: every input waiting or running ends with ``exc`` now (the drain
        timed out); the batch in the model's hands finishes unanswered."""
        with self._wake:
            items = [*self._queue, *self._running]
            self._queue.clear()
        for item in items:
            if not item.future.done():
                item.future.set_exception(exc)

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                continue
            try:
                vectors: list[Any] = list(self._forward(
                    [item.ids for item in batch], [item.types for item in batch],
                    [item.per_token for item in batch]))
            except Exception as exc:  # fail this batch, keep serving
                log.exception("embedding batch failed")
                vectors = [exc] * len(batch)
            self.num_running = 0
            if self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: exiting
                    self._loop.call_soon_threadsafe(_deliver, batch, vectors)

    def _forward(self, inputs: list[list[int]], row_types: list[list[int] | None],
                 per_token: list[bool] | None = None) -> torch.Tensor | list[torch.Tensor]:
        lengths = [len(ids) for ids in inputs]
        width = max(lengths)
        ids = torch.full((len(inputs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        types = None
        if any(row is not None for row in row_types):
            types = torch.zeros((len(inputs), width), dtype=torch.long)
        for i, row in enumerate(inputs):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
            if types is not None and row_types[i]:
                types[i, :len(row)] = torch.tensor(row_types[i])
        t0 = time.perf_counter()
        vectors: torch.Tensor | list[torch.Tensor]
        with torch.inference_mode():
            tokens = getattr(self.run, "tokens", None)  # PooledRows, token_classify.TokenRows
            if per_token and any(per_token) and tokens is not None:
                vectors = [row.cpu() for row in tokens(
                    ids.to(self.device), mask.to(self.device), lengths, per_token)]
            else:
                vectors = self.run(ids.to(self.device), mask.to(self.device),
                                   None if types is None else types.to(self.device),
                                   lengths).cpu()
        log.debug("embedding batch", extra={"fields": {
            "rows": len(inputs), "width": width, "ms": round(1e3 * (time.perf_counter() - t0),
                                                             3)}})
        return vectors


def _deliver(batch: list[_Item], vectors: list[Any]) -> None:
    for item, vector in zip(batch, vectors, strict=True):
        if item.future.done():
            continue
        if isinstance(vector, BaseException):
            item.future.set_exception(vector)
        else:
            item.future.set_result(vector)
