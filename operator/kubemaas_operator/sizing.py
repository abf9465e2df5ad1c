"""PURE: GPU sizing of a language model from its size and shape.

One replica needs, on each of its `t` GPUs (tensor parallelism splits the weights and the KV
heads across them):

    weights / t  +  KV cache / min(t, kv_heads)  +  OVERHEAD_PER_GPU   <=   utilization x memory

- weights: the weights' bytes as served (`weightBytes`, or `parameters` x the dtype's bytes);
- KV cache: 2 (K and V) x layers x kv_heads x head_dim x dtype bytes per token, for
  `maxModelLen` tokens x `MIN_SEQUENCES` sequences (fewer if `maxNumSeqs` is lower) — the least
  that lets a few requests of the longest length run at once (vLLM refuses to start when one
  sequence of `maxModelLen` does not fit; a serving replica needs more than one);
- a layer that attends within a sliding window (`slidingWindow`, on `slidingWindowLayers` of
  the layers) holds, where the engine keeps only the window, min(window + KV_BLOCK,
  `maxModelLen`) positions per sequence instead of `maxModelLen`: vLLM always does (its hybrid
  KV-cache manager frees the blocks that slid out of the window); engine kubemaas does too
  (where the layers mix windowed and full attention, through the runtime's --hybrid-kv-cache,
  on by default: KUBEMAAS_WINDOWS_MIXED_LAYERS);
- OVERHEAD_PER_GPU: the CUDA context, NCCL buffers, CUDA graphs and the activations of the
  engine's profiling step (measured by vLLM's startup at 1-3 GiB for 8B-70B models; 2 GiB here);
- utilization: `spec.runtime.llm.gpuMemoryUtilization` (0.9), the share the engine may take.

A pooling model (an embedding model or a classifier: `pools`) holds no KV cache: its replica
needs the weights and the overhead only.

With `gpu.count: auto` the operator picks the fewest GPUs per replica `t` (a tensor-parallel
degree: it divides the attention heads, and the KV heads divide it or it divides them, as vLLM
requires) on some node type that has `t` GPUs on one node, and the products whose GPUs hold the
replica at that `t`. Node types come from the GPU feature discovery labels
(`nvidia.com/gpu.product`, `nvidia.com/gpu.memory` in MiB) and `nvidia.com/gpu` allocatable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .api import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    SHAPE_KEYS,
    WINDOW_KEYS,
    GPUSizing,
    GPUSpec,
    ModelDeploymentSpec,
    ModelShape,
    SpecError,
    parse_shape,
)
from .scheduling import MEMORY_LABEL, PRODUCT_LABEL, NodeInfo

GiB = 1024**3
MiB = 1024**2
OVERHEAD_PER_GPU = 2 * GiB
MIN_SEQUENCES = 4
MAX_GPUS = 16  # spec.gpu.count's maximum
KV_BLOCK = 16  # positions per KV-cache block: vLLM's and the kubemaas runtime's default
# Does engine kubemaas keep only the window of a windowed layer in a model whose layers mix
# windowed and full attention (Gemma 2 and 3, Qwen2 with max_window_layers)? Yes: the runtime's
# --hybrid-kv-cache (on by default) gives those layers' blocks back as they leave the window,
# its two KV groups sharing one pool of pages (as it does where every layer is windowed).
KUBEMAAS_WINDOWS_MIXED_LAYERS = True
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True, order=True)
class GPUType:
    """One kind of GPU node: its product, each GPU's memory, the most GPUs one node has."""

    product: str
    memory_mib: int
    gpus: int

    @property
    def short(self) -> str:
        return self.product.removeprefix("NVIDIA-") or "unlabelled"


def tensor_parallel_degrees(heads: int, kv_heads: int, limit: int = MAX_GPUS) -> list[int]:
    """The tensor-parallel sizes vLLM starts with, up to `limit`: each divides the attention
    heads, and divides the KV heads or is a multiple of them (they are then replicated)."""
    return [t for t in range(1, limit + 1)
            if heads % t == 0 and (kv_heads % t == 0 or t % kv_heads == 0)]


@dataclass(frozen=True)
class Need:
    """The memory one replica needs, in parts."""

    weights: int
    kv_cache: int  # for `sequences` x `max_model_len` tokens
    sequences: int
    max_model_len: int
    heads: int | None
    kv_heads: int
    utilization: float
    windowed_layers: int = 0  # layers whose KV is counted for `window_positions` only
    window_positions: int = 0
    layers: int = 0

    @property
    def total(self) -> int:
        """Weights + KV cache (+ the overhead of each GPU, which depends on the GPU count)."""
        return self.weights + self.kv_cache

    def per_gpu(self, t: int) -> int:
        return (math.ceil(self.weights / t) + math.ceil(self.kv_cache / min(t, self.kv_heads))
                + OVERHEAD_PER_GPU)

    def fits(self, t: int, memory_mib: int) -> bool:
        return self.per_gpu(t) <= self.utilization * memory_mib * MiB

    def degrees(self, limit: int = MAX_GPUS) -> list[int]:
        """Tensor-parallel degrees vLLM accepts for this shape, smallest first."""
        if self.heads is None:
            return [1]
        return tensor_parallel_degrees(self.heads, self.kv_heads, limit)

    def words(self, t: int | None = None) -> str:
        tail = f" + {_gib(OVERHEAD_PER_GPU)} per GPU"
        if t is not None:
            tail = (f" + {t} x {_gib(OVERHEAD_PER_GPU)} per GPU = "
                    f"{_gib(self.total + t * OVERHEAD_PER_GPU)}")
        cache = f"KV cache {_gib(self.kv_cache)} for {self.sequences} x {self.max_model_len} " \
            "tokens" if self.sequences else "no KV cache: a pooling model"
        if self.windowed_layers:
            cache += (f", {self.windowed_layers} of {self.layers} layers' sliding window "
                      f"counted at {self.window_positions} positions")
        return (f"needs {_gib(self.total)} per replica (weights {_gib(self.weights)} + {cache}"
                f"{tail}), within {self.utilization:g} of each GPU's memory")


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def _serving_dtype(shape: ModelShape, asked: str | None) -> str:
    """The dtype the engine serves in: the one asked for, else the model's (float32 models
    run in bfloat16 on GPUs, as vLLM's `--dtype auto` does)."""
    if asked and asked != "auto":
        return asked
    return shape.dtype if shape.dtype in ("bfloat16", "float16") else "bfloat16"


def pools(architecture: str | None) -> bool:
    """Is this an architecture engines run as a pooling model (vLLM's ``--runner auto``): a
    base model without a language-model head (``Qwen3Model``, ``BertModel``) or a classifier
    (``*ForSequenceClassification``)?"""
    if not architecture:
        return False
    generating = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    return architecture.endswith("ForSequenceClassification") or (
        architecture.endswith("Model") and not architecture.endswith(generating))


def holds_window_only(engine: str | None, windowed_layers: int, layers: int) -> bool:
    """Does `engine` keep only the window of a windowed layer (rather than its whole context)?
    An unknown engine (None) is sized for the whole context."""
    if engine == "vllm":
        return True
    if engine == "kubemaas":
        return windowed_layers >= layers or KUBEMAAS_WINDOWS_MIXED_LAYERS
    return False


def need_of(shape: ModelShape, *, max_model_len: int | None = None,
            max_num_seqs: int | None = None, dtype: str | None = None,
            utilization: float | None = None, engine: str | None = None) -> Need:
    """The memory a replica needs on `engine` (None: sized as if no layer were windowed), or
    SpecError saying which part of the shape is missing."""
    path = "spec.model.shape"
    serving = _serving_dtype(shape, dtype)
    width = DTYPE_BYTES[serving]
    if shape.parameters is not None and (dtype not in (None, "auto")
                                         or shape.weight_bytes is None):
        weights = shape.parameters * width
    elif shape.weight_bytes is not None:
        stored = DTYPE_BYTES.get(shape.dtype or serving, width)
        weights = shape.weight_bytes * width // stored
    else:
        raise SpecError(path, "needs weightBytes or parameters to size the GPUs")
    heads = shape.num_attention_heads
    if pools(shape.architecture):  # no KV cache: the weights and the overhead
        return Need(weights=weights, kv_cache=0, sequences=0,
                    max_model_len=max_model_len or shape.max_position_embeddings or 0,
                    heads=heads, kv_heads=shape.num_key_value_heads or heads or 1,
                    utilization=utilization or DEFAULT_GPU_MEMORY_UTILIZATION)
    # hiddenSize / numAttentionHeads; a hiddenSize below the heads (a config.json that cannot
    # be right) gives no headDim rather than 0, which would size the KV cache at nothing.
    head_dim = shape.head_dim or (shape.hidden_size // heads
                                  if shape.hidden_size and heads
                                  and shape.hidden_size >= heads else None)
    if shape.num_layers is None or head_dim is None:
        raise SpecError(path, "needs numLayers and headDim (or hiddenSize and "
                        "numAttentionHeads) to size the KV cache")
    kv_heads = shape.num_key_value_heads or heads
    if kv_heads is None:
        raise SpecError(path, "needs numKeyValueHeads or numAttentionHeads to size the KV cache")
    length = max_model_len or shape.max_position_embeddings
    if length is None:
        raise SpecError("spec.runtime.llm.maxModelLen", "is needed to size the KV cache (the "
                        "shape has no maxPositionEmbeddings)")
    sequences = min(MIN_SEQUENCES, max_num_seqs or MIN_SEQUENCES)
    layers = shape.num_layers
    windowed = min(shape.sliding_window_layers or 0, layers) if shape.sliding_window else 0
    positions = min((shape.sliding_window or 0) + KV_BLOCK, length)
    if not windowed or positions >= length or not holds_window_only(engine, windowed, layers):
        windowed, positions = 0, 0
    per_layer_token = 2 * kv_heads * head_dim * width
    kv_cache = per_layer_token * sequences * ((layers - windowed) * length + windowed * positions)
    return Need(weights=weights, kv_cache=kv_cache, sequences=sequences,
                max_model_len=length, heads=heads, kv_heads=kv_heads,
                utilization=utilization or DEFAULT_GPU_MEMORY_UTILIZATION,
                windowed_layers=windowed, window_positions=positions, layers=layers)


def gpu_types(nodes: Iterable[NodeInfo]) -> tuple[GPUType, ...]:
    """The node types that offer whole GPUs with a known memory (cordoned nodes count: they may
    come back, and the choice should not flap with a drain)."""
    most: dict[tuple[str, int], int] = {}
    for node in nodes:
        gpus = node.allocatable.get(GPU_RESOURCE, 0)
        try:
            memory = int(node.labels.get(MEMORY_LABEL, ""))
        except ValueError:
            continue
        if gpus <= 0 or memory <= 0:
            continue
        key = (node.labels.get(PRODUCT_LABEL, ""), memory)
        most[key] = max(most.get(key, 0), gpus)
    return tuple(sorted(GPUType(p, m, g) for (p, m), g in most.items()))


@dataclass(frozen=True)
class Choice:
    count: int
    products: tuple[str, ...]
    need: Need


def choose(need: Need, types: Iterable[GPUType], one_gpu: bool = False) -> Choice | GPUSizing:
    """The fewest GPUs per replica on some node type, and the products that hold it then; or
    why none can (GPUSizing with reason ModelTooLarge and the numbers)."""
    types = list(types)
    degrees = [1] if one_gpu else need.degrees()
    best: tuple[int, list[GPUType]] | None = None
    for t in degrees:
        holding = [g for g in types if g.gpus >= t and need.fits(t, g.memory_mib)]
        if holding:
            best = (t, holding)
            break
    if best is not None:
        t, holding = best
        return Choice(count=t, products=tuple(sorted({g.product for g in holding})), need=need)
    return _too_large(need, types, one_gpu)


def _too_large(need: Need, types: list[GPUType], one_gpu: bool) -> GPUSizing:
    words = need.words()
    if not types:
        message = (f"{words}; no node offers whole GPUs with the labels {MEMORY_LABEL} and "
                   f"{GPU_RESOURCE} allocatable")
        return GPUSizing(need=words, reason="ModelTooLarge", message=message,
                         summary=f"ModelTooLarge: needs {_gib(need.total)}/replica, no GPU node")
    # What would hold it if a node had enough GPUs: the fewest GPUs, then the largest memory.
    every = need.degrees()
    would = sorted(((t, -g.memory_mib, g) for g in types for t in every
                    if need.fits(t, g.memory_mib)), key=lambda x: (x[0], x[1], x[2].product))
    largest = max(g.gpus for g in types)
    if would:
        t, _, g = would[0]
        hold = f"{t} x {g.short} would hold it"
        if one_gpu:
            detail = (f"engine kubemaas serves on one GPU; {hold} with engine vllm (or lower "
                      "runtime.llm.maxModelLen, or a smaller dtype)")
            summary = (f"ModelTooLarge: needs {_gib(need.total)}/replica, more than one GPU; "
                       f"{t}x{g.short} with vllm")
        else:
            detail = f"{hold}, but no node offers more than {largest} GPUs"
            summary = (f"ModelTooLarge: needs {_gib(need.total)}/replica; {t}x{g.short} would "
                       f"hold it, nodes have at most {largest}")
    else:
        biggest = max(types, key=lambda g: g.memory_mib)
        most = every[-1]
        detail = (f"not even {most} x {biggest.short} ({biggest.memory_mib} MiB each) would "
                  f"hold it: it needs {_gib(need.per_gpu(most))} per GPU then")
        summary = (f"ModelTooLarge: needs {_gib(need.total)}/replica, more than {most}x"
                   f"{biggest.short} hold")
    message = (f"{words}: {detail}; the nodes offer "
               + ", ".join(f"{g.gpus} x {g.short} ({g.memory_mib} MiB)" for g in types))
    return GPUSizing(need=words, reason="ModelTooLarge", message=message, summary=summary)


def _no_match(need: Need, gpu: GPUSpec, types: tuple[GPUType, ...]) -> GPUSizing:
    """GPU nodes exist, but none of the products or the memory spec.gpu asks for: say that,
    not that the model is too large for nodes that do not exist."""
    offered = ", ".join(f"{g.gpus} x {g.short} ({g.memory_mib} MiB)" for g in types)
    if gpu.products and not {g.product for g in types} & set(gpu.products):
        asked = " or ".join(sorted(gpu.products))
        return GPUSizing(
            need=need.words(), reason="UnknownGPUProduct",
            message=(f"{need.words()}; no node offers {asked} (label {PRODUCT_LABEL}): set "
                     f"spec.gpu.products to products the nodes offer: {offered}"),
            summary=f"UnknownGPUProduct: no node offers {asked}")
    return GPUSizing(
        need=need.words(), reason="ModelTooLarge",
        message=(f"{need.words()}; no node offers GPUs of the products and memory spec.gpu "
                 f"asks for (minMemory {gpu.min_memory_mib} MiB): the nodes offer {offered}"),
        summary=f"ModelTooLarge: no node matches spec.gpu (minMemory {gpu.min_memory_mib} MiB)")


def shape_from_cache(cache: Mapping[str, Any] | None) -> ModelShape | None:
    """The shape a ModelCache recorded in status.model (same keys as spec.model.shape), or None
    when there is no cache, no such field yet, or nothing there can be read. Each key is read on
    its own: the cache records config.json's values as they are, and one the sizing cannot use
    (a 0, a dtype such as int8 or float8_e4m3fn) is left out rather than the whole record."""
    if not isinstance(cache, Mapping):
        return None
    status = cache.get("status")
    record = status.get("model") if isinstance(status, Mapping) else None
    if not isinstance(record, Mapping) or not record:
        return None
    usable: dict[str, Any] = {}
    for key in SHAPE_KEYS:
        together = WINDOW_KEYS if key in WINDOW_KEYS else (key,)  # the window: both or neither
        if any(k not in record for k in together):
            continue
        try:
            parse_shape({k: record[k] for k in together}, "status.model")
        except SpecError:
            continue
        usable[key] = record[key]
    if not usable:
        return None
    while True:
        try:
            return parse_shape(usable, "status.model")
        except SpecError as err:
            # KV heads that do not divide the heads: the heads stand in for them; a window on
            # more layers than the model has: no window (the whole context is counted)
            dropped = WINDOW_KEYS if err.path.endswith(WINDOW_KEYS) else ("numKeyValueHeads",)
            if not any(k in usable for k in dropped):
                raise
            for k in dropped:
                usable.pop(k, None)


def model_shape(spec: ModelDeploymentSpec, recorded: ModelShape | None) -> ModelShape | None:
    """The shape sizing reads: each key the model cache recorded, else spec.model.shape's (a
    record without a usable numLayers, say, is completed by the spec instead of voiding it)."""
    given = spec.model.shape
    if recorded is None or given is None:
        return recorded or given
    return dataclasses.replace(given, **{
        f.name: getattr(recorded, f.name) for f in dataclasses.fields(recorded)
        if getattr(recorded, f.name) is not None})


def size_gpus(spec: ModelDeploymentSpec, types: Iterable[GPUType],
              recorded: ModelShape | None = None) -> ModelDeploymentSpec:
    """The spec with `gpu.count: auto` decided: count and products from the sizing, and the
    sizing itself on `gpu.sizing` (with the reason when no node type can hold the model).
    Any other spec is returned as it is."""
    gpu = spec.gpu
    if gpu is None or not gpu.auto:
        _check_degree(spec)
        return spec
    shape = model_shape(spec, recorded)
    if shape is None:
        message = ("gpu.count auto needs the model's shape: set spec.model.shape, or wait for "
                   "the model cache to record it")
        return _with(spec, dataclasses.replace(gpu, count=1, sizing=GPUSizing(
            need="", reason="ModelShapeUnknown", message=message,
            summary="ModelShapeUnknown: set spec.model.shape")))
    llm = spec.runtime.llm
    try:
        need = need_of(shape, max_model_len=llm.max_model_len if llm else None,
                       max_num_seqs=llm.max_num_seqs if llm else None,
                       dtype=llm.dtype if llm else None,
                       utilization=llm.gpu_memory_utilization if llm else None,
                       engine=spec.engine)
    except SpecError as err:
        if recorded is None and spec.model.cache is None and spec.model.auto_cache is None:
            # no cache will ever record the shape: the spec must be fixed (InvalidSpec), not
            # waited for with one GPU of any size
            raise SpecError(err.path, f"{err.message} (gpu.count auto)") from err
        where = err.path
        if recorded is not None and where == "spec.model.shape":  # the record lacks it too
            where = "spec.model.shape (completing the model cache's status.model)"
        return _with(spec, dataclasses.replace(gpu, count=1, sizing=GPUSizing(
            need="", reason="ModelShapeUnknown",
            message=f"gpu.count auto: {where}: {err.message}",
            summary=f"ModelShapeUnknown: {where} {err.message}"[:120])))
    types = tuple(types)
    allowed = [g for g in types if (not gpu.products or g.product in gpu.products)
               and (gpu.min_memory_mib is None or g.memory_mib >= gpu.min_memory_mib)]
    one_gpu = spec.engine == "kubemaas"
    picked = choose(need, allowed, one_gpu=one_gpu) if allowed or not types else _no_match(
        need, gpu, types)
    if isinstance(picked, GPUSizing):
        # The pods ask for what would hold the model — the fewest GPUs of a size that would,
        # as a minimum GPU memory no node offers — so they wait unscheduled instead of
        # loading onto GPUs that are too small (and the status says ModelTooLarge).
        every = [1] if one_gpu else need.degrees()
        count = next((t for t in every for g in types if need.fits(t, g.memory_mib)), every[-1])
        least = math.ceil(need.per_gpu(count) / need.utilization / MiB)
        return _with(spec, dataclasses.replace(gpu, count=count, min_memory=f"{least}Mi",
                                               sizing=picked))
    hold = (f"{picked.count} x {' or '.join(p.removeprefix('NVIDIA-') for p in picked.products)}"
            " holds it")
    return _with(spec, dataclasses.replace(
        gpu, count=picked.count, products=picked.products,
        sizing=GPUSizing(need=f"{need.words(picked.count)}: {hold}")))


def _check_degree(spec: ModelDeploymentSpec) -> None:
    """A fixed gpu.count is vLLM's --tensor-parallel-size: refuse one vLLM cannot start with
    for the shape the spec gives (it exits at once: 'Total number of attention heads (32) must
    be divisible by tensor parallel size (3)'), rather than crash-loop a pod on that many GPUs."""
    gpu, shape = spec.gpu, spec.model.shape
    if (gpu is None or gpu.auto or gpu.mig_profile is not None or spec.engine != "vllm"
            or shape is None or not shape.num_attention_heads):
        return
    heads = shape.num_attention_heads
    kv = shape.num_key_value_heads or heads
    t = gpu.count
    ok = tensor_parallel_degrees(heads, kv)  # gpu.count is at most MAX_GPUS
    if t in ok:
        return
    raise SpecError("spec.gpu.count", f"engine vllm runs {t} GPUs as --tensor-parallel-size {t}, "
                    f"which must divide the model's {heads} attention heads (and divide its {kv} "
                    f"KV heads, or they it): use {', '.join(map(str, ok))}, or auto")


def _with(spec: ModelDeploymentSpec, gpu: GPUSpec) -> ModelDeploymentSpec:
    return dataclasses.replace(spec, gpu=gpu)


# The startup probe's budget: the engine must load the weights (and a vLLM server only listens
# once it has): 10 minutes, plus the weights read at LOAD_BYTES_PER_S.
STARTUP_BASE_S = 600
LOAD_BYTES_PER_S = 200 * MiB


def startup_budget_s(spec: ModelDeploymentSpec, recorded: ModelShape | None = None) -> int:
    """Seconds the startup probe allows before the kubelet restarts a loading engine."""
    shape = model_shape(spec, recorded)
    if shape is None:
        return STARTUP_BASE_S
    weights = shape.weight_bytes or (shape.parameters or 0) * DTYPE_BYTES.get(
        shape.dtype or "bfloat16", 2)
    return STARTUP_BASE_S + math.ceil(weights / LOAD_BYTES_PER_S)
