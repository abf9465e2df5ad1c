"""Prometheus metrics in the text exposition format, with no dependency and a cheap hot path.

Everything is updated from the event loop thread (or under the GIL from one worker thread), so plain
dicts and floats are enough: no locks on the request path.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .llm.request_stream import Delta

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

LabelValues = tuple[str, ...]


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{v}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Counter:
    def __init__(self, name: str, help_: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_, tuple(labels)
        self.values: dict[LabelValues, float] = {}

    def inc(self, labels: LabelValues = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, key)} {_fmt(value)}")
        return lines


class Gauge(Counter):
    def set(self, labels: LabelValues, value: float) -> None:
        self.values[labels] = value

    def render(self) -> list[str]:
        lines = super().render()
        lines[1] = f"# TYPE {self.name} gauge"
        return lines


class Histogram:
    def __init__(self, name: str, help_: str, buckets: Sequence[float],
                 labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_, tuple(labels)
        self.buckets = tuple(buckets)
        # per label set: [count per bucket..., +Inf count], sum
        self.counts: dict[LabelValues, list[int]] = {}
        self.sums: dict[LabelValues, float] = {}

    def observe(self, labels: LabelValues, value: float) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
            self.sums[labels] = 0.0
        counts[bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            cumulative = 0
            for bound, count in zip(self.buckets, counts, strict=False):
                cumulative += count
                le = f'le="{_fmt(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} "
                             f"{cumulative}")
            cumulative += counts[-1]
            inf = 'le="+Inf"'
            lines.append(f"{self.name}_bucket{_labels(self.label_names, key, inf)} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} "
                         f"{_fmt(self.sums[key])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {cumulative}")
        return lines


class Metrics:
    """The runtime's metrics. Label ``model`` is the served model's name."""

    def __init__(self) -> None:
        self.requests = Counter(
            "kubemaas_requests_total",
            "Inference requests by endpoint and outcome (ok, client_error, not_found, "
            "unavailable = overloaded/timeout/loading, server_error).",
            ("model", "endpoint", "outcome"))
        self.request_duration = Histogram(
            "kubemaas_request_duration_seconds",
            "Time from request received to response ready, for inference requests.",
            LATENCY_BUCKETS, ("model", "endpoint"))
        self.queue_duration = Histogram(
            "kubemaas_queue_duration_seconds",
            "Time a request waited in the batcher before its model call started.",
            LATENCY_BUCKETS, ("model",))
        self.inference_duration = Histogram(
            "kubemaas_inference_duration_seconds",
            "Duration of one model call (one batch), including merge and split.",
            LATENCY_BUCKETS, ("model",))
        self.batch_size = Histogram(
            "kubemaas_batch_size", "Rows per model call (dynamic batching).",
            BATCH_BUCKETS, ("model",))
        self.inflight = Gauge(
            "kubemaas_inflight_requests", "Inference requests admitted and not yet answered.",
            ("model",))
        # The autoscaling signals under vLLM's names and label, so that one query (and one KEDA
        # trigger) reads tensor models and language models alike (docs/autoscaling.md).
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Admitted requests not inside a model call yet (batch groups, worker slots).",
            ("model_name",))
        self.running = Gauge(
            "vllm:num_requests_running", "Requests inside a model call.", ("model_name",))
        self.queue_rejections = Counter(
            "kubemaas_queue_rejections_total",
            "Requests refused with 503 because the queue was full.", ("model",))
        self.model_ready = Gauge(
            "kubemaas_model_ready", "1 when the model is loaded and warmed up.", ("model",))
        self.load_seconds = Gauge(
            "kubemaas_model_load_seconds", "Time to fetch, load and warm up the model.",
            ("model",))
        # more exposition lines, rendered after the above (security/gate.py adds its own)
        self.collectors: list[Callable[[], list[str]]] = []

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in (self.requests, self.request_duration, self.queue_duration,
                       self.inference_duration, self.batch_size, self.inflight,
                       self.waiting, self.running, self.queue_rejections, self.model_ready,
                       self.load_seconds):
            lines.extend(metric.render())
        for collect in self.collectors:
            lines.extend(collect())
        return ("\n".join(lines) + "\n").encode()


# vLLM's bucket bounds, so that dashboards and recording rules made for vLLM read ours unchanged
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
N_BUCKETS = (1, 2, 5, 10, 20)
SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")  # vLLM's prompt sources
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


def one_two_five(limit: int) -> tuple[int, ...]:
    """vLLM's buckets of token counts: 1, 2, 5, 10, 20, 50, ... up to ``limit``."""
    out: list[int] = []
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale > limit:
                return tuple(out)
            out.append(m * scale)
        scale *= 10


class LLMMetrics:
    """Language-model metrics under vLLM's names (label ``model_name``), read by the Gateway API
    Inference Extension's endpoint picker, llm-d, KEDA scalers and vLLM dashboards. The gauges
    are set from the engine's counters when /metrics is scraped."""

    def __init__(self, model_name: str, block_size: int, num_blocks: int,
                 max_model_len: int = 2048) -> None:
        self.label = (model_name,)
        names = ("model_name",)
        self._request_histograms(names, max_model_len)
        self.waiting = Gauge("vllm:num_requests_waiting",
                             "Requests waiting to be admitted to the running batch.", names)
        self.running = Gauge("vllm:num_requests_running",
                             "Requests in the running batch (prefill or decode).", names)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc",
                              "Fraction of KV-cache blocks in use (1 = full).", names)
        self.cache_info = Gauge("vllm:cache_config_info", "KV-cache configuration.",
                                ("model_name", "block_size", "num_gpu_blocks"))
        if num_blocks:  # (an embedding model has no KV cache)
            self.cache_info.set((model_name, str(block_size), str(num_blocks)), 1)
        self.ttft = Histogram("vllm:time_to_first_token_seconds",
                              "Time from request arrival to its first output token.",
                              TTFT_BUCKETS, names)
        self.itl = Histogram("vllm:inter_token_latency_seconds",
                             "Time between two output tokens of one request.", ITL_BUCKETS, names)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds",
                             "Time from request arrival to its last output token.",
                             E2E_BUCKETS, names)
        self.prompt_tokens = Counter("vllm:prompt_tokens_total", "Prompt tokens processed.",
                                     names)
        # set (with LoRA on) by set_loras
        self.lora_info = Gauge("vllm:lora_requests_info", "Running stats on LoRA requests.",
                               ("max_lora", "waiting_lora_adapters", "running_lora_adapters"))
        self.generation_tokens = Counter("vllm:generation_tokens_total",
                                         "Output tokens generated.", names)
        self.success = Counter("vllm:request_success_total",
                               "Requests finished, by finish reason (stop, length, abort).",
                               ("model_name", "finished_reason"))
        self.rejected = Counter("kubemaas_llm_requests_rejected_total",
                                "Requests refused with 429 because the queue was full.", names)
        self._prompt_source_counters(names)
        self.peak_running = Gauge("kubemaas_llm_peak_running_requests",
                                  "Most requests that were in the running batch at once.", names)
        self.lanes_bytes = Gauge("kubemaas_llm_decode_lanes_bytes",
                                 "Bytes the decode lanes hold (on CPU: a second copy of the "
                                 "decoding sequences' keys and values).", names)
        self.preemptions = Counter("vllm:num_preemptions_total",
                                   "Sequences preempted (blocks taken back, recomputed later).",
                                   names)
        # every labelled series exists from the start (scrapers see zeros, not absences)
        for c in (self.prompt_tokens, self.generation_tokens, self.rejected, self.preemptions,
                  self.prefix_queries, self.prefix_hits, self.cached_tokens):
            c.inc(self.label, 0)
        for source in SOURCES:
            self.tokens_by_source.inc((model_name, source), 0)
        for reason in ("stop", "length", "abort"):
            self.success.inc((model_name, reason), 0)

    def _prompt_source_counters(self, names: tuple[str, ...]) -> None:
        """Where prompt tokens' keys and values came from: the prefix cache's lookups and
        hits, and finished requests' cached and computed prompt tokens."""
        self.prefix_queries = Counter("vllm:prefix_cache_queries_total",
                                      "Prompt tokens looked up in the prefix cache.", names)
        self.prefix_hits = Counter("vllm:prefix_cache_hits_total",
                                   "Prompt tokens found in the prefix cache (not recomputed).",
                                   names)
        self.cached_tokens = Counter("vllm:prompt_tokens_cached_total",
                                     "Prompt tokens of finished requests taken from the prefix "
                                     "cache.", names)
        self.tokens_by_source = Counter(
            "vllm:prompt_tokens_by_source_total", "Prompt tokens of finished requests, by "
            "where their KV came from (no KV is transferred from elsewhere here).",
            ("model_name", "source"))

    def _request_histograms(self, names: tuple[str, ...], max_model_len: int) -> None:
        """vLLM's per-request histograms (its dashboards' queue, prefill and decode panels and
        the request-length heatmaps) and its tokens-per-step histogram."""
        phase = {"queue": "WAITING (queued, not yet admitted to the running batch)",
                 "inference": "RUNNING (admitted until the last token)",
                 "prefill": "PREFILL (admitted until the first token)",
                 "decode": "DECODE (first token until the last)"}
        self.phases = {key: Histogram(f"vllm:request_{key}_time_seconds",
                                      f"Time a request spent in {what}.", E2E_BUCKETS, names)
                       for key, what in phase.items()}
        tokens = one_two_five(max_model_len)
        self.request_prompt_tokens = Histogram("vllm:request_prompt_tokens",
                                               "Prompt tokens of a finished request.", tokens,
                                               names)
        self.request_generation_tokens = Histogram(
            "vllm:request_generation_tokens", "Output tokens of a finished request.", tokens,
            names)
        self.request_max_tokens = Histogram("vllm:request_params_max_tokens",
                                            "A finished request's max_tokens.", tokens, names)
        self.request_n = Histogram("vllm:request_params_n", "A finished request's n.",
                                   N_BUCKETS, names)
        self.request_computed_tokens = Histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Prompt tokens a finished request computed (not taken from the prefix cache).",
            tokens, names)
        self.request_max_generation = Histogram(
            "vllm:request_max_num_generation_tokens",
            "The most output tokens of one choice of a finished request (its n choices).",
            tokens, names)
        self.request_tpot = Histogram(
            "vllm:request_time_per_output_token_seconds",
            "A finished request's mean time per output token after its first (0 for one token "
            "or none).", ITL_BUCKETS, names)
        self.iteration_tokens = Histogram("vllm:iteration_tokens_total",
                                          "Tokens read in one engine step.",
                                          ITERATION_TOKENS_BUCKETS, names)

    def observe_request(self, last: Delta, first_token_at: float | None, arrival: float,
                        max_tokens: int, n: int) -> None:
        """A finished request's histograms and its prompt's sources, from its first choice's
        last delta."""
        computed = last.prompt_tokens - last.cached_tokens
        self.cached_tokens.inc(self.label, last.cached_tokens)
        self.tokens_by_source.inc((self.label[0], "local_cache_hit"), last.cached_tokens)
        self.tokens_by_source.inc((self.label[0], "local_compute"), computed)
        self.request_computed_tokens.observe(self.label, computed)
        self.request_prompt_tokens.observe(self.label, last.prompt_tokens)
        self.request_generation_tokens.observe(self.label, last.completion_tokens)
        self.request_max_tokens.observe(self.label, max_tokens)
        self.request_n.observe(self.label, n)
        if last.scheduled_at is None:
            return  # never admitted (aborted while it waited)
        self.phases["queue"].observe(self.label, last.scheduled_at - arrival)
        self.phases["inference"].observe(self.label, last.at - last.scheduled_at)
        tpot = 0.0  # vLLM's for a request of fewer than two tokens
        if first_token_at is not None:
            self.phases["prefill"].observe(self.label, first_token_at - last.scheduled_at)
            self.phases["decode"].observe(self.label, last.at - first_token_at)
            if last.completion_tokens > 1:
                tpot = (last.at - first_token_at) / (last.completion_tokens - 1)
        self.request_tpot.observe(self.label, tpot)

    def set_loras(self, max_loras: int, running: Sequence[str], waiting: Sequence[str]) -> None:
        """vLLM's LoRA gauge: the adapters of the running and the waiting requests in its
        labels, the time of the reading as its value (the endpoint pickers read the newest)."""
        self.lora_info.values.clear()
        self.lora_info.set((str(max_loras), ",".join(waiting), ",".join(running)), time.time())

    def set_engine(self, waiting: int, running: int, kv_usage: float, preemptions: int,
                   peak_running: int = 0, prefix: tuple[int, int] = (0, 0),
                   step_tokens: dict[int, int] | None = None, lanes_bytes: int = 0) -> None:
        self.peak_running.set(self.label, peak_running)
        self.lanes_bytes.set(self.label, lanes_bytes)
        self.prefix_queries.values[self.label] = float(prefix[0])
        self.prefix_hits.values[self.label] = float(prefix[1])
        self.waiting.set(self.label, waiting)
        self.running.set(self.label, running)
        self.kv_usage.set(self.label, kv_usage)
        self.preemptions.values[self.label] = float(preemptions)
        if step_tokens:  # the engine's count of steps by tokens read, as a histogram
            counts = [0] * (len(ITERATION_TOKENS_BUCKETS) + 1)
            for tokens, steps in step_tokens.items():
                counts[bisect_left(ITERATION_TOKENS_BUCKETS, tokens)] += steps
            self.iteration_tokens.counts[self.label] = counts
            self.iteration_tokens.sums[self.label] = float(
                sum(t * s for t, s in step_tokens.items()))

    def render_lines(self) -> list[str]:
        lines: list[str] = []
        metrics: tuple[Counter | Histogram, ...] = (
            self.waiting, self.running, self.kv_usage, self.cache_info, self.ttft, self.itl,
            self.e2e, self.prompt_tokens, self.generation_tokens, self.success, self.preemptions,
            self.prefix_queries, self.prefix_hits, self.rejected, self.peak_running,
            self.lanes_bytes, *self.phases.values(), self.request_prompt_tokens,
            self.request_generation_tokens, self.request_max_tokens, self.request_n,
            self.request_tpot, self.request_computed_tokens, self.request_max_generation,
            self.cached_tokens, self.tokens_by_source, self.iteration_tokens)
        if self.lora_info.values:
            metrics += (self.lora_info,)
        for metric in metrics:
            lines.extend(metric.render())
        return lines
