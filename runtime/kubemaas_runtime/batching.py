"""Admission, dynamic batching and off-loop execution: the async face of a ``Model``.

* Admission is bounded: at most ``max_queue_size`` requests are waiting or running; the next one
  gets ``Unavailable`` (503 + Retry-After) instead of growing memory.
* With ``max_batch_size > 1`` and a model whose first dimension is dynamic, requests whose inputs
  agree on names, datatypes and every dimension but the first (and that ask for the same outputs)
  are merged along axis 0, up to ``max_batch_size`` rows, and split back per request. Incompatible
  requests are never mixed: they wait in their own group.
* A group is launched when it is full, or when its oldest request has waited ``max_batch_delay``,
  and only when one of the ``instances`` worker slots is free. With a delay of 0 nothing waits on
  purpose, but requests that arrive while the model is busy are merged into the next call: batch
  size adapts to load.
* With ``pad_to`` set, every batched call is padded with zero rows to that many rows and the
  outputs cut back: the model always sees one shape. onnxruntime's CUDA provider needs this: on
  an H100 a resnet18 call took 2.4 ms when the batch size stayed the same and 40-55 ms whenever
  it changed from the previous call, every batch size warmed up before (docs/runtime-benchmark.md).
* Model calls run in a thread pool; the event loop only moves futures. The one exception is a
  call measured to be cheaper than the hand-off itself: when the calls for a request's exact
  input shapes have taken under ``inline_max_s`` (a moving average, learned from earlier calls
  in the worker threads), an unbatched request runs on the event loop. The hop to a worker and
  back costs about 30 us of CPU and, on a busy core, a thread wake-up that sets the latency
  tail; a 7 us model call does not block the loop in any way that matters. A shape never seen,
  or one whose calls grew slower, goes back to the threads.
* What an autoscaler reads, under the names vLLM gives them: ``vllm:num_requests_running``,
  requests inside a model call, and ``vllm:num_requests_waiting``, admitted requests that are
  not (yet): waiting in a batch group or for a worker slot (docs/autoscaling.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .backends.base import Model, warmup_inputs
from .errors import InferenceFailed, InvalidInput, RuntimeErrorBase, Unavailable
from .metrics import Metrics

Outputs = dict[str, np.ndarray]

# distinct input signatures whose call cost is remembered for the inline decision
_MAX_SIGNATURES = 1024
_UNKNOWN = float("inf")


@dataclass(slots=True)
class _Item:
    inputs: Mapping[str, np.ndarray]
    output_names: Sequence[str] | None
    rows: int
    future: asyncio.Future[Outputs]
    enqueued: float
    deadline: float


def translate_model_error(exc: Exception) -> RuntimeErrorBase:
    """A model exception -> a client error when the backend says the input was invalid."""
    if isinstance(exc, RuntimeErrorBase):
        return exc
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    if type(exc).__name__ in ("InvalidArgument", "InvalidInput"):
        return InvalidInput(f"the model rejected the input: {first}")
    return InferenceFailed(f"inference failed: {type(exc).__name__}: {first}")


def padded_batch_rows(model: Model, max_batch_size: int, pad_batches: str) -> int | None:
    """Rows every batched call is padded to, or None. ``auto`` pads for onnxruntime on CUDA,
    which pays tens of milliseconds whenever the input shape changes between calls."""
    if max_batch_size <= 1 or not model.batchable or pad_batches == "never":
        return None
    if pad_batches == "always" or (model.platform == "onnxruntime_onnx"
                                   and model.device == "cuda"):
        return max_batch_size
    return None


def warm_padded(model: Model, rows: int) -> None:
    """Run the model once at the padded shape, so that the first batch does not pay for it."""
    feeds = warmup_inputs(model.inputs)
    if feeds is not None:
        model.run({name: np.zeros((rows, *arr.shape[1:]), dtype=arr.dtype)
                   for name, arr in feeds.items()}, None)


class Batcher:
    def __init__(self, model: Model, *, model_name: str, metrics: Metrics,
                 max_batch_size: int = 1, max_batch_delay_s: float = 0.0,
                 max_queue_size: int = 256, instances: int = 1,
                 inline_max_s: float = 0.0, pad_to: int | None = None) -> None:
        self.model = model
        self.batching = max_batch_size > 1 and model.batchable
        self.max_batch_size = max_batch_size
        self.max_delay = max_batch_delay_s
        self.max_queue = max_queue_size
        self.instances = instances
        self.executor = ThreadPoolExecutor(max_workers=instances,
                                           thread_name_prefix="kubemaas-model")
        self.admitted = 0
        self.running = 0  # requests inside a model call (changed from the worker threads)
        self._running_lock = threading.Lock()
        self._metrics = metrics
        self._label = (model_name,)
        self._publish_load()
        self._pending: dict[Hashable, list[_Item]] = {}
        self._busy = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.inline_max_s = inline_max_s
        self.pad_to = pad_to if self.batching else None
        # input signature -> moving average of model.run seconds (bounded: cleared when full)
        self._call_cost: dict[Hashable, float] = {}

    # -- public ---------------------------------------------------------------------------
    async def infer(self, inputs: Mapping[str, np.ndarray],
                    output_names: Sequence[str] | None) -> Outputs:
        if self.admitted >= self.max_queue:
            self._metrics.queue_rejections.inc(self._label)
            raise Unavailable(f"the queue is full ({self.max_queue} requests admitted); "
                              "retry later", retry_after_s=1)
        self.admitted += 1
        self._publish_load()
        try:
            if self.batching:
                key = self._batch_key(inputs, output_names)
                if key is not None:
                    return await self._enqueue(key, inputs, output_names)
            return await self._run_alone(inputs, output_names)
        finally:
            self.admitted -= 1
            self._publish_load()

    def close(self, wait: bool = True) -> None:
        """Stop the worker threads; ``wait=False`` leaves a model call still running to itself
        (SIGTERM's drain timed out and cut it: its answer is no longer wanted)."""
        if self._timer is not None:
            self._timer.cancel()
        self.executor.shutdown(wait=wait, cancel_futures=True)

    # -- load gauges ----------------------------------------------------------------------
    def _publish_load(self) -> None:
        running = self.running
        self._metrics.inflight.set(self._label, self.admitted)
        self._metrics.running.set(self._label, running)
        self._metrics.waiting.set(self._label, max(0, self.admitted - running))

    def _count_running(self, delta: int) -> None:
        with self._running_lock:
            self.running += delta
        self._publish_load()

    # -- unbatched ------------------------------------------------------------------------
    def _call(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None,
              enqueued: float) -> tuple[Outputs, float, float]:
        start = time.perf_counter()
        self._count_running(1)
        try:
            out = self.model.run(inputs, output_names)
        finally:
            self._count_running(-1)
        return out, start - enqueued, time.perf_counter() - start

    @staticmethod
    def _signature(inputs: Mapping[str, np.ndarray],
                   output_names: Sequence[str] | None) -> Hashable:
        return (tuple((name, arr.dtype.str, arr.shape) for name, arr in inputs.items()),
                tuple(output_names) if output_names is not None else None)

    def _learn_cost(self, signature: Hashable, took: float) -> None:
        known = self._call_cost.get(signature)
        if known is None and len(self._call_cost) >= _MAX_SIGNATURES:
            self._call_cost.clear()
        self._call_cost[signature] = took if known is None else 0.8 * known + 0.2 * took

    async def _run_alone(self, inputs: Mapping[str, np.ndarray],
                         output_names: Sequence[str] | None) -> Outputs:
        signature = self._signature(inputs, output_names) if self.inline_max_s > 0 else None
        try:
            if signature is not None and \
                    self._call_cost.get(signature, _UNKNOWN) < self.inline_max_s:
                out, queued, took = self._call(inputs, output_names, time.perf_counter())
            else:
                out, queued, took = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._call, inputs, output_names, time.perf_counter())
        except RuntimeError as exc:
            if "shutdown" in str(exc):
                raise Unavailable("the runtime is shutting down") from None
            raise translate_model_error(exc) from None
        except Exception as exc:
            raise translate_model_error(exc) from None
        if signature is not None:
            self._learn_cost(signature, took)
        self._metrics.queue_duration.observe(self._label, queued)
        self._metrics.inference_duration.observe(self._label, took)
        self._metrics.batch_size.observe(self._label, self._rows_of(inputs) or 1)
        return out

    # -- batched --------------------------------------------------------------------------
    @staticmethod
    def _rows_of(inputs: Mapping[str, np.ndarray]) -> int | None:
        rows: int | None = None
        for arr in inputs.values():
            if arr.ndim == 0:
                return None
            if rows is None:
                rows = arr.shape[0]
            elif arr.shape[0] != rows:
                return None
        return rows

    def _batch_key(self, inputs: Mapping[str, np.ndarray],
                   output_names: Sequence[str] | None) -> Hashable | None:
        rows = self._rows_of(inputs)
        if rows is None or rows == 0 or rows > self.max_batch_size:
            return None
        if any(arr.dtype == np.object_ for arr in inputs.values()):
            return None
        sig = tuple(sorted((name, arr.dtype.str, arr.shape[1:]) for name, arr in inputs.items()))
        return (sig, tuple(output_names) if output_names is not None else None)

    async def _enqueue(self, key: Hashable, inputs: Mapping[str, np.ndarray],
                       output_names: Sequence[str] | None) -> Outputs:
        loop = asyncio.get_running_loop()
        self._loop = loop
        now = time.perf_counter()
        rows = self._rows_of(inputs) or 1
        item = _Item(inputs, output_names, rows, loop.create_future(), now, now + self.max_delay)
        self._pending.setdefault(key, []).append(item)
        self._schedule()
        return await item.future

    def _schedule(self) -> None:
        now = time.perf_counter()
        while self._busy < self.instances and self._pending:
            chosen: Hashable | None = None
            oldest = float("inf")
            earliest_deadline = float("inf")
            for key, items in self._pending.items():
                # drop requests that were cancelled (timeout, client gone) while waiting
                live = [it for it in items if not it.future.done()]
                if len(live) != len(items):
                    items[:] = live
                if not items:
                    continue
                head = items[0]
                due = head.deadline <= now or sum(it.rows for it in items) >= self.max_batch_size
                if due and head.enqueued < oldest:
                    chosen, oldest = key, head.enqueued
                earliest_deadline = min(earliest_deadline, head.deadline)
            for key in [k for k, v in self._pending.items() if not v]:
                del self._pending[key]
            if chosen is None:
                if self._pending:
                    self._arm_timer(earliest_deadline)
                return
            self._launch(self._take(chosen))

    def _take(self, key: Hashable) -> list[_Item]:
        items = self._pending[key]
        taken: list[_Item] = []
        rows = 0
        while items and rows + items[0].rows <= self.max_batch_size:
            item = items.pop(0)
            taken.append(item)
            rows += item.rows
        if not items:
            del self._pending[key]
        return taken

    def _arm_timer(self, deadline: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        delay = max(0.0, deadline - time.perf_counter())
        self._timer_at = deadline
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    def _launch(self, items: list[_Item]) -> None:
        self._busy += 1
        try:
            fut = self.executor.submit(self._execute, items)
        except RuntimeError:
            self._busy -= 1
            for it in items:
                if not it.future.done():
                    it.future.set_exception(Unavailable("the runtime is shutting down"))
            return
        loop = self._loop
        assert loop is not None
        fut.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._on_done, items, f))

    def _execute(self, items: list[_Item]) -> tuple[list[Outputs], float, float]:
        start = time.perf_counter()
        total = sum(it.rows for it in items)
        pad = self.pad_to - total if self.pad_to is not None else 0
        if len(items) == 1 and not pad:
            merged: Mapping[str, np.ndarray] = items[0].inputs
        else:
            merged = {name: np.concatenate(
                [it.inputs[name] for it in items]
                + ([np.zeros((pad, *arr.shape[1:]), dtype=arr.dtype)] if pad else []))
                for name, arr in items[0].inputs.items()}
        # every item in a group asked for the same outputs: the key includes them
        self._count_running(len(items))
        try:
            outputs = self.model.run(merged, items[0].output_names)
        finally:
            self._count_running(-len(items))
        if len(items) == 1 and not pad:
            return [outputs], start, time.perf_counter() - start
        results: list[Outputs] = [{} for _ in items]
        for name, arr in outputs.items():
            if arr.ndim == 0 or arr.shape[0] != total + pad:
                raise InferenceFailed(f"output {name!r} has shape {list(arr.shape)}, which does "
                                      f"not keep the batch of {total + pad} rows; turn batching "
                                      "off for this model")
            offset = 0
            for i, it in enumerate(items):
                results[i][name] = arr[offset:offset + it.rows]
                offset += it.rows
        return results, start, time.perf_counter() - start

    def _on_done(self, items: list[_Item],
                 fut: ThreadFuture[tuple[list[Outputs], float, float]]) -> None:
        self._busy -= 1
        try:
            results, start, took = fut.result()
        except Exception as exc:
            error = translate_model_error(exc)
            for it in items:
                if not it.future.done():
                    it.future.set_exception(error)
        else:
            self._metrics.inference_duration.observe(self._label, took)
            for it in items:
                self._metrics.queue_duration.observe(self._label, start - it.enqueued)
            self._metrics.batch_size.observe(self._label, sum(it.rows for it in items))
            for it, result in zip(items, results, strict=True):
                if not it.future.done():
                    it.future.set_result(result)
        self._schedule()
