"""Runtime settings from command-line flags and KUBEMAAS_* environment variables.

Precedence: flag > environment variable > default. Every setting is validated at start and a bad
one stops the runtime with a one-line message naming the flag and the variable.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import StartupError
from .setting_values import Option, _bool, _optional_str, parse_bytes
from .settings_cors import CORS_OPTIONS, check_cors
from .settings_lora import LORA_OPTIONS, check_lora
from .settings_security import SECURITY_OPTIONS, check_security

FORMATS = ("onnx", "torchscript", "torch-export", "keras", "hf")
LLM_DTYPES = ("auto", "float32", "bfloat16", "float16")
TOOL_CALL_PARSERS = ("auto", "none", "hermes", "llama3_json", "mistral", "pythonic",
                     "qwen3_coder")  # protocol/openai_tools.py
SCHEDULING_POLICIES = ("fcfs", "priority")  # llm/scheduler.py
RUNNERS = ("auto", "generate", "pooling")  # llm/server.py
REASONING_PARSERS = ("auto", "none", "deepseek_r1", "qwen3")  # protocol/openai_reasoning.py
DEVICES = ("auto", "cpu", "cuda")
PAD_BATCHES = ("auto", "always", "never")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kubemaas", "models")


OPTIONS: tuple[Option, ...] = (
    Option("model_uri", "--model-uri", "KUBEMAAS_MODEL_URI", None, _optional_str,
           "Where the model is: a local path, file://, http(s):// or s3://bucket/key. Required. "
           "A local directory (e.g. a mounted volume) must hold exactly one model file "
           "(.onnx, .pt, .pth, .ts, .torchscript, .pt2, .keras, .h5), searched two levels deep."),
    Option("model_format", "--format", "KUBEMAAS_MODEL_FORMAT", None, _optional_str,
           "onnx | torchscript | torch-export | keras | hf. Default: from the file extension "
           "(.onnx, .pt/.pth/.ts/.torchscript, .pt2, .keras/.h5), or hf for a local directory "
           "with a config.json. hf: a Hugging Face language-model directory (config.json, "
           "*.safetensors, tokenizer.json) served over the OpenAI API (docs/llm.md); for "
           "s3:// and http(s):// give --format hf."),
    Option("model_name", "--name", "KUBEMAAS_MODEL_NAME", "model", str,
           "Model name in the URL paths (/v2/models/NAME)."),
    Option("model_version", "--version", "KUBEMAAS_MODEL_VERSION", "1", str,
           "Model version reported in metadata and accepted in /versions/VERSION."),
    Option("signature_name", "--signature-name", "KUBEMAAS_SIGNATURE_NAME", "serving_default",
           str, "The signature_name the TensorFlow Serving v1 predict route takes (a request "
           "that gives none gets it): a SavedModel converted from another signature "
           "(tfconvert --signature) is served under that one's name."),
    Option("model_sha256", "--model-sha256", "KUBEMAAS_MODEL_SHA256", None, _optional_str,
           "Expected sha256 (hex) of the model file; a mismatch stops the runtime."),
    Option("cache_dir", "--cache-dir", "KUBEMAAS_CACHE_DIR", None, _optional_str,
           "Directory for downloaded models (atomic writes). Default: "
           "$XDG_CACHE_HOME/kubemaas/models or ~/.cache/kubemaas/models."),
    Option("host", "--host", "KUBEMAAS_HOST", "0.0.0.0", str, "Address to listen on."),
    Option("port", "--port", "KUBEMAAS_PORT", 8080, int, "HTTP port."),
    Option("max_batch_size", "--max-batch-size", "KUBEMAAS_MAX_BATCH_SIZE", 1, int,
           "Dynamic batching: most rows merged into one model call. 1 turns batching off."),
    Option("max_batch_delay_ms", "--max-batch-delay-ms", "KUBEMAAS_MAX_BATCH_DELAY_MS", 0.0,
           float, "Dynamic batching: longest a request waits for others before its batch runs. "
           "0 = no waiting: requests that queue while the model is busy are merged."),
    Option("max_queue_size", "--max-queue-size", "KUBEMAAS_MAX_QUEUE_SIZE", 256, int,
           "Requests admitted (waiting or running) before new ones get 503 + Retry-After (429 on "
           "the hf path)."),
    Option("pad_batches", "--pad-batches", "KUBEMAAS_PAD_BATCHES", "auto", str,
           "auto | always | never. Pad every batched call with zero rows to --max-batch-size, "
           "so the model always sees one shape. auto: for onnxruntime on CUDA, which pays tens "
           "of ms whenever the batch size changes between calls."),
    Option("instances", "--instances", "KUBEMAAS_INSTANCES", 1, int,
           "Model calls that may run at the same time (worker threads)."),
    Option("inline_max_us", "--inline-max-us", "KUBEMAAS_INLINE_MAX_US", 50.0, float,
           "Unbatched model calls whose shapes were measured to take less than this run on the "
           "event loop instead of a worker thread (the hand-off costs ~30 us). 0 = always a "
           "worker thread."),
    Option("intra_op_threads", "--intra-op-threads", "KUBEMAAS_INTRA_OP_THREADS", 0, int,
           "Threads inside one operator (onnxruntime intra_op / torch set_num_threads). "
           "0 = library default."),
    Option("inter_op_threads", "--inter-op-threads", "KUBEMAAS_INTER_OP_THREADS", 0, int,
           "Threads across operators (onnxruntime inter_op / torch interop). 0 = default."),
    Option("device", "--device", "KUBEMAAS_DEVICE", "auto", str,
           "auto | cpu | cuda. auto uses CUDA when a GPU and the CUDA build are present."),
    Option("tf32", "--tf32", "KUBEMAAS_TF32", False, _bool,
           "On a GPU, let matrix products and convolutions use TF32 (faster on Ampere and later, "
           "about 1e-3 relative error). Off: results agree with the CPU's to FP32 rounding."),
    Option("warmup", "--warmup", "KUBEMAAS_WARMUP", True, _bool,
           "Run the model once on zeros before reporting ready."),
    Option("max_request_bytes", "--max-request-bytes", "KUBEMAAS_MAX_REQUEST_BYTES",
           64 * 1024 * 1024, int, "Largest request body accepted; larger gets 413."),
    Option("max_inflight_bytes", "--max-inflight-bytes", "KUBEMAAS_MAX_INFLIGHT_BYTES", 0, int,
           "Request bodies held at once by requests in flight; past it new requests get 503 + "
           "Retry-After before their body is read. 0 = 4 x max-request-bytes."),
    Option("request_timeout_s", "--request-timeout-s", "KUBEMAAS_REQUEST_TIMEOUT_S", 30.0,
           float, "Per-request time limit for inference (queue + run); over it gets 503."),
    Option("drain_timeout_s", "--drain-timeout-s", "KUBEMAAS_DRAIN_TIMEOUT_S", 20.0, float,
           "On SIGTERM: longest wait for in-flight requests before exiting. Keep it below the "
           "pod's terminationGracePeriodSeconds."),
    Option("shutdown_delay_s", "--shutdown-delay-s", "KUBEMAAS_SHUTDOWN_DELAY_S", 0.0, float,
           "On SIGTERM: keep serving this long with readiness 503 before draining, so that "
           "Service endpoints drop the pod first (like a preStop sleep)."),
    Option("dtype", "--dtype", "KUBEMAAS_DTYPE", "auto", str,
           "hf models: auto | float32 | bfloat16 | float16. auto: float32 on CPU, bfloat16 on "
           "CUDA."),
    Option("tool_call_parser", "--tool-call-parser", "KUBEMAAS_TOOL_CALL_PARSER", "auto", str,
           "hf models: auto | none | hermes | llama3_json | mistral | pythonic | qwen3_coder. "
           "How tool calls are read from a model's text when a chat request lets it choose "
           "(tool_choice auto): hermes for <tool_call> blocks (Hermes, Qwen2.5, Qwen3), "
           "llama3_json for Llama 3.1+, mistral for [TOOL_CALLS], pythonic for the "
           "[name(key=value)] lists of Llama 3.2 and 4, qwen3_coder for the XML calls of "
           "Qwen3-Coder and Qwen3.5; auto: the one the model's chat template writes, if any. "
           "none (or auto finding none): such requests are 400."),
    Option("chat_template", "--chat-template", "KUBEMAAS_CHAT_TEMPLATE", None, _optional_str,
           "hf models: the chat template to use instead of the tokenizer's, as vLLM's flag "
           "takes it: a file (a relative path is looked up in the model directory, then the "
           "working directory) or the template itself (any text with {, } or a newline). "
           "For a model that ships none, or a tool-calling template of one's own."),
    Option("reasoning_parser", "--reasoning-parser", "KUBEMAAS_REASONING_PARSER", "auto", str,
           "hf models: auto | none | deepseek_r1 | qwen3. Where a chat answer's <think> block "
           "goes: deepseek_r1 and qwen3 (one format: Qwen3, QwQ, DeepSeek-R1 and its "
           "distills) put it in the message's reasoning_content, apart from the content; "
           "auto: so if the model's chat template handles </think>; none: the text as "
           "written."),
    Option("kv_cache_memory", "--kv-cache-memory", "KUBEMAAS_KV_CACHE_MEMORY", 0, parse_bytes,
           "hf models: bytes for the paged KV cache (e.g. 2Gi). 0 = on CUDA "
           "--gpu-memory-utilization of the GPU minus what the model takes, on CPU 256Mi."),
    Option("gpu_memory_utilization", "--gpu-memory-utilization",
           "KUBEMAAS_GPU_MEMORY_UTILIZATION", 0.9, float,
           "hf models on CUDA with --kv-cache-memory 0: fraction of GPU memory the process may "
           "use (weights + KV cache)."),
    Option("max_model_len", "--max-model-len", "KUBEMAAS_MAX_MODEL_LEN", 0, int,
           "hf models: most tokens of prompt + completion. 0 = the model's "
           "max_position_embeddings."),
    Option("max_num_seqs", "--max-num-seqs", "KUBEMAAS_MAX_NUM_SEQS", 64, int,
           "hf models: most sequences in the running batch; others wait in the queue."),
    Option("max_num_batched_tokens", "--max-num-batched-tokens",
           "KUBEMAAS_MAX_NUM_BATCHED_TOKENS", 2048, int,
           "hf models: tokens per engine step (decodes + prefill chunks); a longer prompt is "
           "read in chunks over several steps."),
    Option("prefill_share", "--prefill-share", "KUBEMAAS_PREFILL_SHARE", 1.0, float,
           "hf models: while sequences are decoding, a step's prompt tokens are capped (from "
           "a fit of measured step times) so that the step takes about (1 + share) x what its "
           "decodes alone take (no cap while more prompts wait than streams decode); arriving "
           "prompts then take more steps. 0: only the token budget caps them."),
    Option("arrival_window_ms", "--arrival-window-ms", "KUBEMAAS_ARRIVAL_WINDOW_MS", 10.0,
           float,
           "hf models: an idle engine that receives a request waits while more keep arriving "
           "(each within 1 ms of the last), at most this long, and reads them in one step, so "
           "a burst decodes in step. 0: read each at once."),
    Option("block_size", "--block-size", "KUBEMAAS_BLOCK_SIZE", 16, int,
           "hf models: tokens per KV-cache block."),
    Option("packed_linear", "--packed-linear", "KUBEMAAS_PACKED_LINEAR", True, _bool,
           "hf models on CPU: reorder the weights of linear layers of 512 x 512 or more once "
           "into oneDNN's blocked layout (faster steps, same memory); false keeps torch's "
           "linear."),
    Option("traced_decode", "--traced-decode", "KUBEMAAS_TRACED_DECODE", True, _bool,
           "hf models (Llama, Mistral, Qwen2, Qwen3): steps that only decode replay a recorded "
           "graph, on CPU traced once from the model (bit-identical logits, less Python per "
           "step), on CUDA CUDA graphs captured at start-up; false runs every step eagerly."),
    Option("decode_lanes", "--decode-lanes", "KUBEMAAS_DECODE_LANES", True, _bool,
           "hf models on CPU: keep the decoding sequences' keys and values also contiguous, "
           "one lane per sequence, in up to as many bytes as --kv-cache-memory, so that a "
           "decode step's attention reads them in place instead of gathering cache blocks "
           "(2.7x less time per layer at long contexts); false: no second copy."),
    Option("hybrid_kv_cache", "--hybrid-kv-cache", "KUBEMAAS_HYBRID_KV_CACHE", True, _bool,
           "hf models whose layers mix a sliding window and full attention (Gemma 2, Gemma 3, "
           "Qwen2/Qwen3 with max_window_layers): two KV groups over one pool of pages, the "
           "windowed layers' blocks given back as they leave a sequence's window (more long "
           "sequences at once, as many short ones as one pool); false: one pool of every "
           "layer's blocks, every block kept."),
    Option("runner", "--runner", "KUBEMAAS_RUNNER", "auto", str,
           "hf models: auto | generate | pooling (vLLM's). pooling serves an embedding model "
           "(/v1/embeddings, /score, /rerank) or a *ForSequenceClassification classifier "
           "(/classify; /score and /rerank for a cross-encoder); auto: pooling when "
           "config.json names a base model (no language-model head) or a classifier, or "
           "sentence-transformers' modules.json is there."),
    Option("hf_overrides", "--hf-overrides", "KUBEMAAS_HF_OVERRIDES", None, _optional_str,
           "hf models: vLLM's JSON object of config.json keys to replace, for example "
           "{\"architectures\": [\"Qwen3ForSequenceClassification\"], "
           "\"classifier_from_token\": [\"no\", \"yes\"], "
           "\"is_original_qwen3_reranker\": true} to serve Qwen3-Reranker as a reranker."),
    Option("pooler_config", "--pooler-config", "KUBEMAAS_POOLER_CONFIG", None, _optional_str,
           "hf embedding models: how to pool, vLLM's JSON {\"pooling_type\": LAST|MEAN|CLS, "
           "\"normalize\": true|false}. Default: the sentence-transformers files, else LAST "
           "(CLS for BERT-like encoders) and normalized."),
    Option("scheduling_policy", "--scheduling-policy", "KUBEMAAS_SCHEDULING_POLICY", "fcfs",
           str, "hf models: fcfs | priority. fcfs: waiting requests are admitted in arrival "
           "order, and a request's priority other than 0 is refused; priority (vLLM's): by "
           "their priority field (lower first), then arrival, and a full cache preempts the "
           "running request that comes last in that order."),
    Option("prefix_caching", "--prefix-caching", "KUBEMAAS_PREFIX_CACHING", True, _bool,
           "hf models: requests whose prompts share a prefix of full blocks reuse its KV-cache "
           "blocks instead of computing them again."),
    Option("return_tokens_as_token_ids", "--return-tokens-as-token-ids",
           "KUBEMAAS_RETURN_TOKENS_AS_TOKEN_IDS", False, _bool,
           "hf models: vLLM's. Logprobs name each token \"token_id:N\" instead of its text, "
           "unless a request's return_tokens_as_token_ids says otherwise.", nargs="?",
           const="true"),
    Option("log_level", "--log-level", "KUBEMAAS_LOG_LEVEL", "info", str,
           "debug | info | warning | error."),
    Option("log_format", "--log-format", "KUBEMAAS_LOG_FORMAT", "json", str,
           "json (one object per line) | text."),
    Option("log_stats_interval_s", "--log-stats-interval-s", "KUBEMAAS_LOG_STATS_INTERVAL_S",
           10.0, float, "hf models: every this many seconds while the engine has work, one "
           "info record of its prompt and generation throughput, requests running and "
           "waiting, KV cache usage, prefix cache hit rate and preemptions (vLLM's periodic "
           "stats line). 0: never (vLLM's --disable-log-stats)."),
    Option("log_requests", "--log-requests", "KUBEMAAS_LOG_REQUESTS", False, _bool,
           "Write one info record per request when it ends: its request_id, method, path, "
           "status, seconds, and a generation's tokens, finish reason and time to first token "
           "(never the prompt or the answer). Probes and /metrics are not recorded.",
           nargs="?", const="true"),
    Option("s3_endpoint", "--s3-endpoint", "KUBEMAAS_S3_ENDPOINT", None, _optional_str,
           "S3-compatible endpoint URL (also read from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL). "
           "Default: https://s3.REGION.amazonaws.com."),
    Option("s3_credentials_dir", "--s3-credentials-dir", "KUBEMAAS_S3_CREDENTIALS_DIR", None,
           _optional_str, "Directory of a mounted Secret with files AWS_ACCESS_KEY_ID, "
           "AWS_SECRET_ACCESS_KEY and optionally AWS_SESSION_TOKEN, AWS_REGION. "
           "Default: the AWS_* environment variables."),
    Option("download_timeout_s", "--download-timeout-s", "KUBEMAAS_DOWNLOAD_TIMEOUT_S", 300.0,
           float, "Socket timeout for http(s):// and s3:// downloads."),
    *SECURITY_OPTIONS,
    *CORS_OPTIONS,
    *LORA_OPTIONS,
)


@dataclass(frozen=True)
class Settings:
    model_uri: str
    model_format: str
    model_name: str = "model"
    model_version: str = "1"
    signature_name: str = "serving_default"
    model_sha256: str | None = None
    cache_dir: str = ""
    host: str = "0.0.0.0"
    port: int = 8080
    max_batch_size: int = 1
    max_batch_delay_ms: float = 0.0
    max_queue_size: int = 256
    pad_batches: str = "auto"
    instances: int = 1
    inline_max_us: float = 50.0
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    device: str = "auto"
    tf32: bool = False
    warmup: bool = True
    max_request_bytes: int = 64 * 1024 * 1024
    max_inflight_bytes: int = 0
    request_timeout_s: float = 30.0
    drain_timeout_s: float = 20.0
    shutdown_delay_s: float = 0.0
    dtype: str = "auto"
    tool_call_parser: str = "auto"
    chat_template: str | None = None
    reasoning_parser: str = "auto"
    kv_cache_memory: int = 0
    gpu_memory_utilization: float = 0.9
    max_model_len: int = 0
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    prefill_share: float = 1.0
    arrival_window_ms: float = 10.0
    block_size: int = 16
    prefix_caching: bool = True
    packed_linear: bool = True
    traced_decode: bool = True
    decode_lanes: bool = True
    hybrid_kv_cache: bool = True
    scheduling_policy: str = "fcfs"
    runner: str = "auto"
    pooler_config: str | None = None
    hf_overrides: str | None = None
    enable_lora: bool = False
    lora_modules: tuple[tuple[str, str], ...] = ()
    max_loras: int = 1
    max_lora_rank: int = 16
    allow_runtime_lora_updating: bool = False
    log_level: str = "info"
    log_requests: bool = False
    log_stats_interval_s: float = 10.0
    return_tokens_as_token_ids: bool = False
    log_format: str = "json"
    s3_endpoint: str | None = None
    s3_credentials_dir: str | None = None
    download_timeout_s: float = 300.0
    api_keys_dir: str | None = None
    tls_dir: str | None = None
    metrics_port: int | None = None
    metrics_without_key: bool = False
    rate_limit_rps: float = 0.0
    rate_limit_burst: float = 0.0
    rate_limit_tpm: int = 0
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    allowed_origins: tuple[str, ...] = ()
    allowed_methods: tuple[str, ...] = ("*",)
    allowed_headers: tuple[str, ...] = ("*",)
    allow_credentials: bool = False


def _local_dir(uri: str) -> bool:
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        return False
    return os.path.isdir(uri)


def _hf_dir(uri: str) -> bool:
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        return False
    return os.path.isfile(os.path.join(uri, "config.json"))


def guess_format(uri: str) -> str | None:
    if _hf_dir(uri):
        return "hf"
    path = uri.split("?", 1)[0].lower()
    if path.endswith(".onnx"):
        return "onnx"
    if path.endswith(".pt2"):
        return "torch-export"
    if path.endswith((".keras", ".h5")):
        return "keras"
    if path.endswith((".pt", ".pth", ".ts", ".torchscript")):
        return "torchscript"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubemaas-runtime",
        description="Serve one model over the Open Inference Protocol v2 (HTTP/REST). "
        "Every flag can also be set with the environment variable shown.",
    )
    for opt in OPTIONS:
        default = opt.default if opt.default is not None else "-"
        parser.add_argument(opt.flag, dest=opt.field, default=None, metavar=opt.env,
                            nargs=opt.nargs, const=opt.const,
                            help=f"{opt.help} [env {opt.env}; default {default}]")
    return parser


def _fail(opt: Option, message: str) -> StartupError:
    return StartupError(f"invalid setting {opt.flag} / {opt.env}: {message}")


Check = Callable[[str, bool, str], None]


def _read(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """Every option's value: its flag, else its environment variable, else its default."""
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw: str | list[str] | None = getattr(args, opt.field)
        if isinstance(raw, list):  # a flag of several words: a line each
            raw = "\n".join(raw)
        if raw is None:
            raw = env.get(opt.env)
        if raw is None or (raw == "" and opt.default is None):
            values[opt.field] = opt.default
            continue
        try:
            values[opt.field] = opt.parse(raw)
        except ValueError as exc:
            raise _fail(opt, f"cannot parse {raw!r}: {exc}") from None
    return values


def _check_model(values: dict[str, Any], check: Check) -> None:
    """The model's URI, format (guessed from the file name when unset), name and digest."""
    uri = values["model_uri"]
    check("model_uri", bool(uri), "the model URI is required")
    fmt = values["model_format"] or guess_format(uri)
    if fmt is None and _local_dir(uri):
        fmt = ""  # a mounted directory: the format comes from the model file found in it
    check("model_format", fmt is not None,
          "cannot tell the format from the file name; set it (onnx|torchscript|torch-export"
          "|keras|hf)")
    check("model_format", fmt != "tf-savedmodel",
          "tf-savedmodel (a TensorFlow SavedModel) is converted to ONNX before the runtime starts "
          "(python -m kubemaas_runtime.tfconvert, which the operator runs as an init "
          "container); serve the converted model.onnx")
    check("model_format", fmt in (*FORMATS, ""), f"{fmt!r} is not one of {', '.join(FORMATS)}")
    values["model_format"] = fmt
    check("model_name", bool(_NAME_RE.match(values["model_name"])),
          f"{values['model_name']!r} must match {_NAME_RE.pattern}")
    check("model_version", bool(_NAME_RE.match(values["model_version"])),
          f"{values['model_version']!r} must match {_NAME_RE.pattern}")
    check("signature_name", bool(_NAME_RE.match(values["signature_name"])),
          f"{values['signature_name']!r} must match {_NAME_RE.pattern}")
    if values["model_sha256"] is not None:
        values["model_sha256"] = values["model_sha256"].strip().lower()
        check("model_sha256", bool(_SHA256_RE.match(values["model_sha256"])),
              "must be 64 hexadecimal characters")


def _check_limits(values: dict[str, Any], check: Check) -> None:
    """Ports, sizes, timeouts and the engines' limits, each within its range."""
    values["cache_dir"] = str(Path(values["cache_dir"] or _default_cache_dir()))
    check("port", 0 <= values["port"] <= 65535, "must be between 0 and 65535")
    check("max_batch_size", 1 <= values["max_batch_size"] <= 65536, "must be 1..65536")
    check("max_batch_delay_ms", 0 <= values["max_batch_delay_ms"] <= 10_000,
          "must be 0..10000 ms")
    check("max_queue_size", values["max_queue_size"] >= 1, "must be at least 1")
    check("pad_batches", values["pad_batches"] in PAD_BATCHES,
          f"must be one of {', '.join(PAD_BATCHES)}")
    check("instances", 1 <= values["instances"] <= 64, "must be 1..64")
    check("inline_max_us", 0 <= values["inline_max_us"] <= 10_000, "must be 0..10000 us")
    check("intra_op_threads", values["intra_op_threads"] >= 0, "must be 0 or more")
    check("inter_op_threads", values["inter_op_threads"] >= 0, "must be 0 or more")
    check("device", values["device"] in DEVICES, f"must be one of {', '.join(DEVICES)}")
    check("max_request_bytes", values["max_request_bytes"] >= 1024, "must be at least 1024")
    check("max_inflight_bytes", values["max_inflight_bytes"] == 0
          or values["max_inflight_bytes"] >= values["max_request_bytes"],
          "must be 0 or at least --max-request-bytes")
    check("request_timeout_s", values["request_timeout_s"] > 0, "must be positive")
    check("drain_timeout_s", values["drain_timeout_s"] >= 0, "must be 0 or more")
    check("shutdown_delay_s", 0 <= values["shutdown_delay_s"] <= 600, "must be 0..600 s")
    check("download_timeout_s", values["download_timeout_s"] > 0, "must be positive")
    check("dtype", values["dtype"] in LLM_DTYPES, f"must be one of {', '.join(LLM_DTYPES)}")
    check("tool_call_parser", values["tool_call_parser"] in TOOL_CALL_PARSERS,
          f"must be one of {', '.join(TOOL_CALL_PARSERS)}")
    check("reasoning_parser", values["reasoning_parser"] in REASONING_PARSERS,
          f"must be one of {', '.join(REASONING_PARSERS)}")
    check("runner", values["runner"] in RUNNERS, f"must be one of {', '.join(RUNNERS)}")
    check("scheduling_policy", values["scheduling_policy"] in SCHEDULING_POLICIES,
          f"must be one of {', '.join(SCHEDULING_POLICIES)}")
    check("kv_cache_memory", values["kv_cache_memory"] >= 0, "must be 0 or more bytes")
    check("gpu_memory_utilization", 0 < values["gpu_memory_utilization"] <= 1,
          "must be in (0, 1]")
    check("max_model_len", values["max_model_len"] >= 0, "must be 0 or more")
    check("max_num_seqs", 1 <= values["max_num_seqs"] <= 4096, "must be 1..4096")
    check("prefill_share", 0 <= values["prefill_share"] <= 100, "must be 0..100")
    check("arrival_window_ms", 0 <= values["arrival_window_ms"] <= 1000, "must be 0..1000 ms")
    check("block_size", values["block_size"] in (8, 16, 32, 64, 128),
          "must be 8, 16, 32, 64 or 128")
    check("max_num_batched_tokens",
          values["max_num_batched_tokens"] >= max(values["max_num_seqs"], values["block_size"]),
          "must be at least --max-num-seqs and --block-size")
    check("log_stats_interval_s", 0 <= values["log_stats_interval_s"] <= 86400,
          "must be 0 (never) to 86400 s")


def load_settings(argv: Sequence[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Parse flags and environment into validated Settings, or raise StartupError."""
    env = os.environ if environ is None else environ
    values = _read(build_parser().parse_args(argv), env)
    by_field = {opt.field: opt for opt in OPTIONS}

    def check(name: str, ok: bool, message: str) -> None:
        if not ok:
            raise _fail(by_field[name], message)

    _check_model(values, check)
    _check_limits(values, check)
    check_lora(values, check)
    check_security(values, check)
    check_cors(values, check)
    values["log_level"] = values["log_level"].lower()
    check("log_level", values["log_level"] in LOG_LEVELS,
          f"must be one of {', '.join(LOG_LEVELS)}")
    check("log_format", values["log_format"] in LOG_FORMATS,
          f"must be one of {', '.join(LOG_FORMATS)}")
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in known})
