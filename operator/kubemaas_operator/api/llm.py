"""PURE: the language-model parts of the spec: `spec.model.shape` (the model's size and shape, for
GPU sizing), `spec.runtime.engine` and `spec.runtime.llm` (settings both engines understand), and
the checks across parts that refuse combinations no engine can serve (the CRD's CEL rules say the
same; this is the second line for objects that predate them)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .engine_flags import check_owned_flags
from .fields import SpecError, array, integer, json_name, obj, string

if TYPE_CHECKING:
    from .model import ModelSource
    from .placement import GPUSpec
    from .runtime import RuntimeSpec
    from .serving import Serving

ENGINES = ("kubemaas", "vllm")
SHAPE_DTYPES = ("float32", "bfloat16", "float16")
LLM_DTYPES = ("auto", *SHAPE_DTYPES)
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
_SERVED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./:-]{0,127}$")

# spec.model.shape's keys (camelCase) — the same keys a ModelCache records in status.model.
SHAPE_KEYS = ("architecture", "parameters", "weightBytes", "numLayers", "hiddenSize",
              "numAttentionHeads", "numKeyValueHeads", "headDim", "maxPositionEmbeddings",
              "dtype", "slidingWindow", "slidingWindowLayers")
# The keys that only mean something together: a window, and how many layers attend within it.
WINDOW_KEYS = ("slidingWindow", "slidingWindowLayers")


@dataclass(frozen=True)
class ModelShape:
    """A language model's size and shape: config.json's values and its weights' total bytes."""

    architecture: str | None = field(metadata=json_name("architecture"), default=None)
    parameters: int | None = field(metadata=json_name("parameters"), default=None)
    weight_bytes: int | None = field(metadata=json_name("weightBytes"), default=None)
    num_layers: int | None = field(metadata=json_name("numLayers"), default=None)
    hidden_size: int | None = field(metadata=json_name("hiddenSize"), default=None)
    num_attention_heads: int | None = field(metadata=json_name("numAttentionHeads"),
                                            default=None)
    num_key_value_heads: int | None = field(metadata=json_name("numKeyValueHeads"),
                                            default=None)
    head_dim: int | None = field(metadata=json_name("headDim"), default=None)
    max_position_embeddings: int | None = field(metadata=json_name("maxPositionEmbeddings"),
                                                default=None)
    dtype: str | None = field(metadata=json_name("dtype"), default=None)
    # config.json sliding_window, and how many layers attend within it (the others attend to
    # the whole context); both or neither
    sliding_window: int | None = field(metadata=json_name("slidingWindow"), default=None)
    sliding_window_layers: int | None = field(metadata=json_name("slidingWindowLayers"),
                                              default=None)


@dataclass(frozen=True)
class LLMSettings:
    max_model_len: int | None = field(metadata=json_name("maxModelLen"), default=None)
    max_num_seqs: int | None = field(metadata=json_name("maxNumSeqs"), default=None)
    dtype: str | None = field(metadata=json_name("dtype"), default=None)
    gpu_memory_utilization: float | None = field(metadata=json_name("gpuMemoryUtilization"),
                                                 default=None)
    served_model_name: str | None = field(metadata=json_name("servedModelName"), default=None)
    extra_args: tuple[str, ...] = field(metadata=json_name("extraArgs"), default=())


def parse_shape(raw: Any, path: str = "spec.model.shape") -> ModelShape | None:
    """A shape object (spec.model.shape, or a ModelCache's status.model) -> ModelShape."""
    if raw is None:
        return None
    s = obj(raw, path)
    dtype = string(s.get("dtype"), f"{path}.dtype")
    if dtype is not None and dtype not in SHAPE_DTYPES:
        raise SpecError(f"{path}.dtype", f"{dtype!r} is not one of {', '.join(SHAPE_DTYPES)}")
    big = 2**62
    shape = ModelShape(
        architecture=string(s.get("architecture"), f"{path}.architecture"),
        parameters=integer(s.get("parameters"), f"{path}.parameters", 1, big),
        weight_bytes=integer(s.get("weightBytes"), f"{path}.weightBytes", 1, big),
        num_layers=integer(s.get("numLayers"), f"{path}.numLayers", 1, 100_000),
        hidden_size=integer(s.get("hiddenSize"), f"{path}.hiddenSize", 1, 10_000_000),
        num_attention_heads=integer(s.get("numAttentionHeads"), f"{path}.numAttentionHeads",
                                    1, 100_000),
        num_key_value_heads=integer(s.get("numKeyValueHeads"), f"{path}.numKeyValueHeads",
                                    1, 100_000),
        head_dim=integer(s.get("headDim"), f"{path}.headDim", 1, 100_000),
        max_position_embeddings=integer(s.get("maxPositionEmbeddings"),
                                        f"{path}.maxPositionEmbeddings", 1, 100_000_000),
        dtype=dtype,
        sliding_window=integer(s.get("slidingWindow"), f"{path}.slidingWindow", 1, 100_000_000),
        sliding_window_layers=integer(s.get("slidingWindowLayers"),
                                      f"{path}.slidingWindowLayers", 1, 100_000))
    _check_window(shape, path)
    heads, kv = shape.num_attention_heads, shape.num_key_value_heads
    if heads is not None and kv is not None and heads % kv:
        # grouped-query attention: each KV head serves heads / kv query heads (a typo here
        # sized the KV cache many times over, or a tensor parallelism no engine takes)
        raise SpecError(f"{path}.numKeyValueHeads", f"{kv} does not divide numAttentionHeads "
                        f"({heads}): config.json's num_key_value_heads does")
    return shape


def _check_window(shape: ModelShape, path: str) -> None:
    """A window needs the count of layers that attend within it, and no more layers than the
    model has (one without the other would size the KV cache for a guess)."""
    window, windowed = shape.sliding_window, shape.sliding_window_layers
    if window is not None and windowed is None:
        raise SpecError(f"{path}.slidingWindowLayers", "is needed with slidingWindow: how many "
                        "layers attend within the window (numLayers when every layer does)")
    if windowed is not None and window is None:
        raise SpecError(f"{path}.slidingWindow", "is needed with slidingWindowLayers: the "
                        "window those layers attend within (config.json sliding_window)")
    if windowed is not None and shape.num_layers is not None and windowed > shape.num_layers:
        raise SpecError(f"{path}.slidingWindowLayers", f"{windowed} is more than numLayers "
                        f"({shape.num_layers})")


def parse_engine(raw: Any) -> str | None:
    engine = string(raw, "spec.runtime.engine")
    if engine is not None and engine not in ENGINES:
        raise SpecError("spec.runtime.engine", f"{engine!r} is not one of {', '.join(ENGINES)}")
    return engine


def parse_llm(raw: Any) -> LLMSettings | None:
    """`spec.runtime.llm` -> LLMSettings (None when absent), or SpecError naming the field."""
    if raw is None:
        return None
    p = "spec.runtime.llm"
    s = obj(raw, p)
    dtype = string(s.get("dtype"), f"{p}.dtype")
    if dtype is not None and dtype not in LLM_DTYPES:
        raise SpecError(f"{p}.dtype", f"{dtype!r} is not one of {', '.join(LLM_DTYPES)}")
    util = s.get("gpuMemoryUtilization")
    if util is not None and (isinstance(util, bool) or not isinstance(util, int | float)
                             or not 0.05 <= util <= 1):
        raise SpecError(f"{p}.gpuMemoryUtilization", f"must be a number from 0.05 to 1, got "
                        f"{util!r}")
    served = string(s.get("servedModelName"), f"{p}.servedModelName")
    if served is not None and not _SERVED.match(served):
        raise SpecError(f"{p}.servedModelName", f"{served!r} is not a valid model name")
    extra = tuple(string(a, f"{p}.extraArgs[{i}]") or ""
                  for i, a in enumerate(array(s.get("extraArgs"), f"{p}.extraArgs")))
    return LLMSettings(
        max_model_len=integer(s.get("maxModelLen"), f"{p}.maxModelLen", 16, 10_000_000),
        max_num_seqs=integer(s.get("maxNumSeqs"), f"{p}.maxNumSeqs", 1, 65536),
        dtype=dtype, gpu_memory_utilization=None if util is None else float(util),
        served_model_name=served, extra_args=extra)


def default_engine(model_format: str, gpu: GPUSpec | None) -> str:
    """vllm for a language model on whole GPUs, kubemaas for everything else."""
    if model_format == "hf" and gpu is not None and gpu.mig_profile is None:
        return "vllm"
    return "kubemaas"


def check_engine(model: ModelSource, runtime: RuntimeSpec, gpu: GPUSpec | None) -> None:
    """Refuse the combinations of format, engine, GPUs and settings that cannot serve."""
    engine = runtime.engine or default_engine(model.format, gpu)
    hf = model.format == "hf"
    if engine == "vllm":
        if not hf:
            raise SpecError("spec.runtime.engine", f"vllm serves language models (format hf), "
                            f"not format {model.format}: use engine kubemaas")
        if gpu is None or gpu.mig_profile is not None:
            raise SpecError("spec.runtime.engine", "vllm needs whole GPUs: set spec.gpu (count "
                            "or auto), or use engine kubemaas for a CPU model")
        if not model.uri.startswith(("pvc://", "file://")) and model.auto_cache is None:
            raise SpecError("spec.model.uri", "engine vllm reads the model from a directory: "
                            "use pvc://CLAIM/PATH or file:///PATH, a model cache (cache or "
                            "autoCache), or engine kubemaas, which fetches http(s):// and "
                            "s3:// directories itself")
    elif not runtime.image:
        raise SpecError("spec.runtime.image", "is required for the kubemaas engine")
    if runtime.llm is not None and not hf:
        raise SpecError("spec.runtime.llm", "configures a language model: it needs model.format "
                        "hf")
    if hf:
        check_owned_flags(runtime.llm.extra_args if runtime.llm else (),
                          "spec.runtime.llm.extraArgs")
        check_owned_flags(runtime.args, "spec.runtime.args")
    if runtime.batching is not None and hf:
        raise SpecError("spec.runtime.batching", "is for tensor models: a language model "
                        "batches continuously (tune spec.runtime.llm.maxNumSeqs)")
    if gpu is not None and gpu.auto:
        if not hf:
            raise SpecError("spec.gpu.count", "auto sizes a language model from its shape: it "
                            "needs model.format hf")
        if gpu.mig_profile is not None:
            raise SpecError("spec.gpu.count", "auto chooses whole GPUs, not MIG slices")
        # A model cache (spec.model.cache or autoCache) records the shape once it downloaded.
        if model.shape is None and model.cache is None and model.auto_cache is None:
            raise SpecError("spec.model.shape", "is needed for gpu.count auto: the GPUs are "
                            "sized from the model's shape (config.json's values and the "
                            "weights' bytes)")
    elif hf and engine == "kubemaas" and gpu is not None and gpu.count > 1:
        raise SpecError("spec.gpu.count", "engine kubemaas serves a language model on one GPU "
                        "(no tensor parallelism): set 1 or auto, or use engine vllm")
    if hf and engine == "kubemaas":
        _check_length(model.shape, runtime.llm)


def _check_length(shape: ModelShape | None, llm: LLMSettings | None) -> None:
    """The kubemaas engine serves at most the model's positions and refuses to start past them
    (it would crash-loop); vLLM may serve more (a rope-scaled model), so it judges itself."""
    length = llm.max_model_len if llm else None
    limit = shape.max_position_embeddings if shape else None
    if length is not None and limit is not None and length > limit:
        raise SpecError("spec.runtime.llm.maxModelLen", f"{length} is over the model's "
                        f"{limit} positions (spec.model.shape.maxPositionEmbeddings): the "
                        f"kubemaas engine serves at most {limit}")


def check_serving(engine: str, serving: Serving) -> None:
    """API keys and TLS are the kubemaas runtime's: vLLM's own options are not rendered."""
    if engine != "vllm":
        return
    for name, value in (("auth", serving.auth), ("tls", serving.tls)):
        if value is not None:
            raise SpecError(f"spec.serving.{name}", "is served by the kubemaas runtime, not by "
                            "engine vllm: put the model behind a Gateway that terminates it, or "
                            "use engine kubemaas")
