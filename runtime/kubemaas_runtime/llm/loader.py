"""Load a Hugging Face model directory: a transformers causal LM (weights memory-mapped from
safetensors) and its fast tokenizer with the chat template.

Architectures come from transformers; the engine needs of them only that their attention layers
write through ``cache.update``, call the configured attention implementation (the engine's
``kubemaas_paged``, attention.py) with the forward's keyword arguments, and take explicit position
ids, which the families in ``FAMILIES`` do (tests cover each). The loaded model is the engine's:
its attention expects an engine step, so a plain ``generate()`` on it does not work.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import StartupError
from ..fetch.shape import EVERY_LAYER_WINDOWED
from . import attention, heap, quantized
from .attention import PagedStep
from .classify import Classifier, classifier_of
from .decoder_stack import StepForward, stack_forward
from .lm_classifier import from_lm_head, lm_head_method
from .packed_linear import pack_linears
from .token_classify import TOKEN_CLASSIFIER_SUFFIX

if TYPE_CHECKING:
    from .lora import LoraSet

log = logging.getLogger("kubemaas.runtime.llm")

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma", "gemma2", "phi3",
            "gemma3_text", "olmo2", "granite", "mixtral", "qwen3_moe")
ENCODER_FAMILIES = ("bert", "roberta", "xlm-roberta", "modernbert")  # pooling runner only
# families whose models transformers runs with no sdpa (Gemma 2: its soft-capped scores)
EAGER_POOLING = ("gemma2",)
CLASSIFIER_SUFFIX = "ForSequenceClassification"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LanguageModel:
    model: Any
    tokenizer: Any
    model_type: str
    device: torch.device
    dtype: torch.dtype
    num_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_position: int
    eos_ids: frozenset[int] = field(default_factory=frozenset)
    chat_template: str | None = None
    # a sliding window: the layers that have it attend to the last ``window`` keys; None:
    # full-causal. ``sliding``: those layers where others attend full-causal; empty: all
    window: int | None = None
    sliding: frozenset[int] = frozenset()
    stack: StepForward | None = None  # the model's modules called directly (decoder_stack.py)
    loras: LoraSet | None = None  # with LoRA on: the adapters and the layers they change

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                keep: torch.Tensor, step: PagedStep) -> torch.Tensor:
        """One engine step's packed tokens ([1, N]); the logits of the ``keep`` positions:
        [K, vocab]."""
        if self.stack is not None:
            return self.stack(input_ids, position_ids, keep, step)
        out = self.model(input_ids=input_ids, position_ids=position_ids, cache=step,
                         use_cache=True, logits_to_keep=keep, **{attention.STEP_KWARG: step})
        return out.logits[0]  # type: ignore[no-any-return]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise StartupError(f"dtype {name!r} is not one of auto, {', '.join(DTYPES)}")
    if device.type == "cpu" and name == "float16":
        raise StartupError("float16 is for CUDA; on CPU use float32 or bfloat16")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise StartupError("--device cuda was asked for but CUDA is not available")
        return torch.device("cuda")
    return torch.device("cpu")


def parse_overrides(text: str | None) -> dict[str, Any]:
    """vLLM's ``--hf-overrides``: a JSON object whose keys replace config.json's."""
    if not text:
        return {}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise StartupError(f"--hf-overrides is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise StartupError("--hf-overrides takes a JSON object of config.json keys")
    return doc


def _check_dir(path: Path, families: tuple[str, ...] = FAMILIES,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    if not (path / "config.json").is_file():
        raise StartupError(f"{path} is not a Hugging Face model directory: no config.json")
    if not any(path.glob("*.safetensors")):
        raise StartupError(f"{path} holds no *.safetensors weights (only safetensors are loaded: "
                           "they are memory-mapped and cannot run code)")
    if not (path / "tokenizer.json").is_file():
        raise StartupError(f"{path} has no tokenizer.json (a fast tokenizer is required)")
    try:
        config: dict[str, Any] = json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise StartupError(f"{path}/config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise StartupError(f"{path}/config.json is not a JSON object")
    config.update(overrides or {})
    model_type = config.get("model_type")
    if model_type == "gemma3":
        raise StartupError(f"{path}/config.json is Gemma 3's multimodal model (model_type "
                           "'gemma3', text and images): only its text-only form is served, "
                           "model_type 'gemma3_text' (Gemma3ForCausalLM)")
    if model_type not in families:
        pooled = f" (with --runner pooling also {', '.join(ENCODER_FAMILIES)})" if \
            families == FAMILIES else ""
        raise StartupError(f"model_type {model_type!r} in {path}/config.json is not served; "
                           f"supported: {', '.join(families)}{pooled}")
    return config


def _architectures(config: dict[str, Any]) -> list[str]:
    return [str(a) for a in config.get("architectures") or []]


def _from_pretrained(path: Path, auto_class: Any, dtype: torch.dtype, attn: str,
                     device: torch.device, overrides: dict[str, Any] | None = None
                     ) -> tuple[Any, Any]:
    """The fast tokenizer and the model (safetensors only), on ``device``, in eval mode;
    ``overrides`` set on its config first."""
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), use_fast=True)
        extra: dict[str, Any] = {}
        if overrides:
            extra["config"] = transformers.AutoConfig.from_pretrained(str(path))
            for key, value in overrides.items():
                setattr(extra["config"], key, value)
        model = auto_class.from_pretrained(str(path), dtype=dtype, attn_implementation=attn,
                                           use_safetensors=True, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StartupError(f"cannot load the model in {path}: {first}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise StartupError(f"{path}: the tokenizer is not a fast tokenizer")
    model.to(device)
    model.eval()
    return tokenizer, model


def load_hf(path: Path, device: str = "auto", dtype: str = "auto", packed_linear: bool = True,
            overrides: dict[str, Any] | None = None) -> LanguageModel:
    """Load the model directory (blocking). ``packed_linear``: on CPU, linear weights in
    oneDNN's layout (packed_linear.py)."""
    import transformers

    classifiers = [a for a in _architectures(_check_dir(path, FAMILIES, overrides))
                   if a.endswith((CLASSIFIER_SUFFIX, TOKEN_CLASSIFIER_SUFFIX))]
    if classifiers:
        raise StartupError(f"{path}/config.json names {classifiers[0]}, a classifier: it "
                           "generates nothing; serve it with --runner pooling (or auto)")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    optimized = quantized.read_marker(path)  # the optimize step's choice, which it measured
    if optimized == "bf16":
        if dtype not in ("auto", "bfloat16"):
            log.warning("the model was optimized to bfloat16: --dtype is ignored",
                        extra={"fields": {"dtype": dtype}})
        torch_dtype = torch.bfloat16
    attention.register()
    attention.choose_kernels(dev)
    tokenizer, model = _from_pretrained(path, transformers.AutoModelForCausalLM, torch_dtype,
                                        attention.ATTN_IMPLEMENTATION, dev, overrides)
    if optimized == "int8-weight-only":
        layers = quantized.int8_weight_only(model)
        log.info("linear weights quantized to int8 (optimize step)",
                 extra={"fields": {"layers": layers}})
    elif packed_linear and dev.type == "cpu":
        log.info("linear weights reordered for oneDNN",
                 extra={"fields": {"layers": pack_linears(model)}})
    # after loading: memory the load freed (weights replaced by their packed copies) went back
    if dev.type == "cpu" and heap.keep_freed_memory():
        log.info("freed memory stays in the heap for the next step (glibc mallopt)")
    cfg = model.config
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    window, sliding = served_window(cfg)
    max_position = _served_positions(cfg, window)
    if window is not None and window >= max_position:
        # no sequence reaches past it: the full-causal masks, at no cost
        window, sliding = None, frozenset()
    eos: set[int] = set()
    gen = model.generation_config
    for source in (getattr(gen, "eos_token_id", None), cfg.eos_token_id,
                   tokenizer.eos_token_id):
        if isinstance(source, int):
            eos.add(source)
        elif isinstance(source, list):
            eos.update(int(x) for x in source)
    return LanguageModel(
        model=model, tokenizer=tokenizer, model_type=str(cfg.model_type), device=dev,
        dtype=torch_dtype, num_layers=int(cfg.num_hidden_layers), kv_heads=kv_heads,
        head_dim=head_dim, vocab_size=int(cfg.vocab_size), max_position=max_position,
        eos_ids=frozenset(eos), chat_template=getattr(tokenizer, "chat_template", None),
        window=window, sliding=sliding, stack=stack_forward(model))


def layer_windows(cfg: Any) -> list[int | None] | None:
    """Each layer's sliding window as transformers' model applies it (None: full-causal), or
    None when the family's use of ``sliding_window`` is not known here. The families of
    ``EVERY_LAYER_WINDOWED`` window every layer with ``sliding_window``; a config with
    ``layer_types`` (Qwen2, Qwen3, Gemma 2, Gemma 3: their configs derive it, and set
    ``sliding_window`` to None when it is off) windows the layers whose entry is
    ``sliding_attention``."""
    window = getattr(cfg, "sliding_window", None)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    types = getattr(cfg, "layer_types", None)
    if not window:
        return [None] * layers
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        # a negative window masks every key (transformers' own forward answers NaN)
        raise StartupError(f"config.json: sliding_window must be a positive integer or null, "
                           f"got {window!r}")
    if cfg.model_type in EVERY_LAYER_WINDOWED:
        return [int(window)] * layers
    if isinstance(types, list) and len(types) == layers:
        return [int(window) if t == "sliding_attention" else None for t in types]
    return None


def served_window(cfg: Any) -> tuple[int | None, frozenset[int]]:
    """The window the engine's masks apply (``LanguageModel.window``) and, when some layers
    attend full-causal, the layers that have it (``LanguageModel.sliding``); (None, empty)
    for a full-causal model, and for one whose windows are not known or not all of one size
    (served up to its window: ``_served_positions``)."""
    windows = layer_windows(cfg)
    sizes = {w for w in windows or () if w is not None}
    if windows is None or len(sizes) != 1:
        return None, frozenset()
    if all(w is not None for w in windows):
        return sizes.pop(), frozenset()
    return sizes.pop(), frozenset(i for i, w in enumerate(windows) if w is not None)


def _served_positions(cfg: Any, window: int | None = None) -> int:
    """The positions the engine serves exactly as the model's own forward: its
    ``max_position_embeddings``, capped to a sliding window that the engine's masks do not
    apply (``window``, the one they do, leaves it whole: a family whose windows are not
    known). A ``longrope`` model is served over all of them, with the one set of rotary
    frequencies that the served length chooses (longrope.pin), as vLLM serves it."""
    max_position = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
    sliding = getattr(cfg, "sliding_window", None)
    if sliding and window is None and getattr(cfg, "use_sliding_window", True) and \
            any(layer_windows(cfg) or [True]):
        log.warning("sliding window: positions capped to the window, %d (the family's use "
                    "of it is not known)", int(sliding))
        max_position = min(max_position, int(sliding))
    return max_position


def pooling_runner(path: Path, overrides: dict[str, Any] | None = None) -> bool:
    """vLLM's ``--runner auto`` for a model directory: pooling when its config names a base
    model (``LlamaModel``, ``BertModel``, ...: no language-model head) or a classifier
    (``*ForSequenceClassification``, ``*ForTokenClassification``), or when it ships the
    sentence-transformers files; otherwise generation."""
    if (path / "modules.json").is_file():
        return True
    archs = _architectures(_check_dir(path, FAMILIES + ENCODER_FAMILIES, overrides))
    generating = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")  # vLLM's suffixes
    heads = (CLASSIFIER_SUFFIX, TOKEN_CLASSIFIER_SUFFIX)
    return bool(archs) and all((a.endswith("Model") and not a.endswith(generating))
                               or a.endswith(heads) for a in archs)


@dataclass
class EmbeddingModel:
    """A pooling model: an embedding model (the base model, whose last_hidden_state is
    pooled) or a classifier (``classifier`` set; the whole ``*ForSequenceClassification``)."""

    model: Any
    tokenizer: Any
    model_type: str
    device: torch.device
    dtype: torch.dtype
    hidden_size: int
    vocab_size: int
    max_position: int
    matryoshka: tuple[int, ...] | bool  # dimensions it was trained to be cut to (True: any)
    encoder: bool          # BERT-like: pools its first (CLS) token by default
    pad_id: int
    classifier: Classifier | None = None
    lower_case: bool = False  # sentence-transformers' do_lower_case: texts lower-cased first


def load_pooling_model(path: Path, device: str = "auto", dtype: str = "auto",
                       packed_linear: bool = True, overrides: dict[str, Any] | None = None
                       ) -> EmbeddingModel:
    """Load the model directory (blocking): a classifier when its config names a
    ``*ForSequenceClassification`` architecture (a causal LM's output head turned into one
    when the config asks: lm_classifier.py), a token classifier for a
    ``*ForTokenClassification`` one, otherwise the base model, for embeddings."""
    import transformers

    config = _check_dir(path, FAMILIES + ENCODER_FAMILIES, overrides)
    per_token = any(a.endswith(TOKEN_CLASSIFIER_SUFFIX) for a in _architectures(config))
    classify = per_token or any(a.endswith(CLASSIFIER_SUFFIX) for a in _architectures(config))
    method = lm_head_method(config) if classify and not per_token else None
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    auto = transformers.AutoModelForCausalLM if method else \
        transformers.AutoModelForTokenClassification if per_token else \
        transformers.AutoModelForSequenceClassification if classify else transformers.AutoModel
    attn = "eager" if config["model_type"] in EAGER_POOLING else "sdpa"
    tokenizer, model = _from_pretrained(path, auto, torch_dtype, attn, dev, overrides)
    if method is not None:
        model = from_lm_head(model, tokenizer, config, method)
    if packed_linear and dev.type == "cpu":
        log.info("linear weights reordered for oneDNN",
                 extra={"fields": {"layers": pack_linears(model)}})
    cfg = model.config
    dims = config.get("matryoshka_dimensions")
    matryoshka: tuple[int, ...] | bool = tuple(int(d) for d in dims) if isinstance(
        dims, list) else bool(config.get("is_matryoshka"))
    return EmbeddingModel(
        model=model, tokenizer=tokenizer, model_type=str(cfg.model_type), device=dev,
        dtype=torch_dtype, hidden_size=int(cfg.hidden_size), vocab_size=int(cfg.vocab_size),
        max_position=_positions(cfg), matryoshka=matryoshka,
        encoder=config["model_type"] in ENCODER_FAMILIES,
        pad_id=int(getattr(cfg, "pad_token_id", None) or 0),
        classifier=classifier_of(config, per_token) if classify else None)


def _positions(cfg: Any) -> int:
    """The longest input: RoBERTa's position table also holds the padding index and those
    below it (XLM-RoBERTa's 514 positions take 512 tokens)."""
    positions = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
    if cfg.model_type in ("roberta", "xlm-roberta"):
        positions -= int(getattr(cfg, "pad_token_id", None) or 0) + 1
    return positions
