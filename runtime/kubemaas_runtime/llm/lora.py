"""LoRA adapters served beside the base model (vLLM's ``--enable-lora``, ``--lora-modules``).

An adapter is a PEFT directory: ``adapter_config.json`` and ``adapter_model.safetensors``, the
low-rank pairs A [r, in] and B [out, r] of some of the model's linear layers. A request names an
adapter as its ``model``. The weights are never merged into the model: with LoRA on, every
linear layer of the model (the output head aside) is wrapped once (``LoraLinear``); a step's
rows are grouped by adapter, and each group's rows get ``B(A(x)) * scale`` added to the base
layer's output, as PEFT computes it. So one batch mixes requests of the base model and of up to
``--max-loras`` adapters (the scheduler holds that limit), and a base request beside them gets
exactly the base model's answer.

Steps with no adapter row run as before (a decode-only step from the traced graph, whose trace
never sees an adapter); a step with one runs the model's modules eagerly.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import StartupError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
PAIR_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
# the families whose adapters' layers are the model's linear layers, by the model's names
# (tests/unit/test_llm_lora.py against PEFT). A mixture of experts' experts are
# [experts, out, in] tensors, not linear layers: PEFT adapts them through
# ``target_parameters``, which is refused (its attention and shared linear layers are served)
LORA_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma", "gemma2", "phi3",
                 "gemma3_text", "olmo2", "granite", "mixtral", "qwen3_moe")


class AdapterError(Exception):
    """An adapter that cannot be served, and why (a startup error or a 400)."""


@dataclass
class Adapter:
    name: str
    path: str  # as it was given (the model card's root)
    id: int    # never reused: its key in the layers and in the prefix cache
    rank: int
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # layer name -> (A, B, scale)


@dataclass
class StepRows:
    """The current step's packed rows by adapter: (adapter id, row indexes, or None for every
    row). Empty: a step of the base model alone."""

    groups: list[tuple[int, torch.Tensor | None]] = field(default_factory=list)


class LoraLinear(torch.nn.Module):
    """A linear layer (``nn.Linear``, a oneDNN-packed one, GPT-2's ``Conv1D``) plus, for the
    rows of the step that use an adapter of this layer, that adapter's low-rank product."""

    def __init__(self, base: torch.nn.Module, rows: StepRows, in_features: int,
                 out_features: int) -> None:
        super().__init__()
        self.base = base
        self.rows = rows
        self.in_features = in_features
        self.out_features = out_features
        # adapter id -> (A, B, scale); plain tensors, not parameters: no trace or count sees them
        self.pairs: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        for adapter, rows in self.rows.groups:
            pair = self.pairs.get(adapter)
            if pair is None:  # the adapter leaves this layer as it is
                continue
            a, b, scale = pair
            if rows is None:
                y = y + F.linear(F.linear(x, a), b) * scale
                continue
            flat = x.reshape(-1, x.shape[-1]).index_select(0, rows)
            delta = F.linear(F.linear(flat, a), b) * scale
            y = y.reshape(-1, y.shape[-1]).index_add(0, rows, delta).reshape(y.shape)
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, LoRA"


def _features(module: torch.nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear layer the adapters may adapt; None for any other module."""
    from transformers.pytorch_utils import Conv1D

    from .packed_linear import FusedPart, PackedLinear

    if isinstance(module, Conv1D):  # GPT-2's: weight [in, out]
        return int(module.weight.shape[0]), int(module.nf)
    if isinstance(module, (torch.nn.Linear, PackedLinear, FusedPart)):
        return int(module.in_features), int(module.out_features)
    return None


def wrap_layers(model: Any, rows: StepRows) -> dict[str, LoraLinear]:
    """Wrap every linear layer of the model but its output head; name -> wrapper, named as the
    model names the layer (PEFT's keys without its prefix)."""
    head = model.get_output_embeddings()
    found = [(name, module, sizes) for name, module in model.named_modules()
             if module is not head and (sizes := _features(module)) is not None]
    layers: dict[str, LoraLinear] = {}
    for name, module, (fan_in, fan_out) in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layers[name] = LoraLinear(module, rows, fan_in, fan_out)
        setattr(parent, child, layers[name])
    return layers


# a pattern of the adapter's is matched against each layer name (some 40 characters) within
# this; Python's re can take forever on one such as (.*.*)*X, holding the GIL: the whole server
PATTERN_TIMEOUT_S = 0.25


def _pattern_value(patterns: dict[str, Any], layer: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern: a key matches a layer name or its tail (a regular
    expression, matched by ``regex`` with a time limit; transformers needs it anyway)."""
    import regex

    for key, value in patterns.items():
        try:
            found = regex.match(rf"(.*\.)?({key})$", layer, timeout=PATTERN_TIMEOUT_S,
                                concurrent=True)
        except TimeoutError:
            raise ValueError(f"the pattern {key!r} takes more than {PATTERN_TIMEOUT_S} s to "
                             "match") from None
        if found:
            return value
    return default


def _configured(path: Path, config: dict[str, Any], layer: str, key: str,
                pattern: str) -> float:
    """A layer's ``r`` or ``lora_alpha``: its ``rank_pattern`` / ``alpha_pattern`` value, else
    the adapter's own (PEFT's default 8)."""
    import regex

    try:
        value = float(_pattern_value(config.get(pattern) or {}, layer, config.get(key, 8)))
    except (regex.error, TypeError, ValueError, AttributeError) as exc:
        raise AdapterError(f"{path}: {key} / {pattern} for {layer!r}: {exc}") from None
    if not math.isfinite(value):
        raise AdapterError(f"{path}: {key} / {pattern} for {layer!r} is {value}")
    return value


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise AdapterError(f"{path} is not a LoRA adapter directory: no {CONFIG_FILE}")
    try:
        config = json.loads(file.read_text())
    except ValueError as exc:
        raise AdapterError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{file} is not a JSON object")
    kind = config.get("peft_type", "LORA")
    refused = [
        (kind != "LORA", f"peft_type {kind!r} (only LORA adapters are served)"),
        (bool(config.get("use_dora")), "use_dora (DoRA's magnitude vectors)"),
        (config.get("bias", "none") != "none", f"bias {config.get('bias')!r} (trained biases)"),
        (bool(config.get("lora_bias")), "lora_bias (a bias on B)"),
        (bool(config.get("modules_to_save")),
         f"modules_to_save {config.get('modules_to_save')!r} (whole layers trained beside "
         "the adapter)"),
        (bool(config.get("target_parameters")), "target_parameters"),
    ]
    for bad, what in refused:
        if bad:
            raise AdapterError(f"{path}: the adapter uses {what}, which is not served")
    # PEFT and vLLM take any lora_alpha: 0 leaves the model as it is, a negative one subtracts
    # the update (an adapter negated in task arithmetic)
    for key, least in (("r", 0.0), ("lora_alpha", -math.inf)):
        value = config.get(key, 8)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not least < value < math.inf:
            raise AdapterError(f"{file}: {key} must be a "
                               f"{'positive' if key == 'r' else 'finite'} number")
    return config


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise AdapterError(f"{path} has no {WEIGHTS_FILE} (only safetensors weights are read: "
                           "they cannot run code)")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{file} cannot be read: {exc}") from None


class LoraSet:
    """The adapters a server holds, by name, and the wrapped layers they adapt."""

    def __init__(self, model: Any, max_loras: int, max_rank: int) -> None:
        family = getattr(model.config, "model_type", None)
        if family not in LORA_FAMILIES:
            raise StartupError(f"LoRA adapters are not served for model_type {family!r} (its "
                               "layers are not known to be the linear layers adapters change; "
                               f"served for {', '.join(LORA_FAMILIES)}): start without "
                               "--enable-lora")
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.rows = StepRows()
        self.layers = wrap_layers(model, self.rows)
        self.by_name: dict[str, Adapter] = {}
        self.names: dict[int, str] = {}  # id -> name, also of adapters unloaded but in use
        self.retired: set[int] = set()  # unloaded: their weights go once no request uses them
        # held by requests that submit more than one sequence over time (a beam search): in
        # use between their sequences too
        self.pins: collections.Counter[int] = collections.Counter()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # loads and unloads (the event loop's threads)
        # the engine's: wakes its thread to free what ``remove`` retired (it may be idle)
        self.on_retire: Callable[[], None] | None = None
        param = next(model.parameters())
        self._dtype, self._device = param.dtype, param.device

    def read(self, name: str, path: Path, given: str | None = None) -> Adapter:
        """Read and check an adapter directory (blocking); not served until ``add``."""
        config = _read_config(path)
        tensors = _read_tensors(path)
        halves: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            match = PAIR_KEY.match(key.removeprefix(PEFT_PREFIX))
            if match is None:
                raise AdapterError(f"{path}: weight {key!r} is not a LoRA pair's A or B (an "
                                   "adapted embedding or a trained layer is not served)")
            halves.setdefault(match["module"], {})[match["part"]] = tensor
        if not halves:
            raise AdapterError(f"{path}/{WEIGHTS_FILE} holds no LoRA weights")
        pairs = {layer: self._pair(path, config, layer, found)
                 for layer, found in sorted(halves.items())}
        rank = max(a.shape[0] for a, _, _ in pairs.values())
        return Adapter(name, given or str(path), next(self._ids), rank, pairs)

    def _pair(self, path: Path, config: dict[str, Any], layer: str,
              found: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
        target = self.layers.get(layer)
        if target is None:
            raise AdapterError(f"{path}: the adapter changes {layer!r}, which is not a linear "
                               "layer of this model that adapters may change")
        if set(found) != {"A", "B"}:
            raise AdapterError(f"{path}: {layer!r} has lora_{''.join(found)} without its pair")
        a, b = found["A"], found["B"]
        rank = a.shape[0] if a.dim() == 2 else -1
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != rank or \
                a.shape[1] != target.in_features or b.shape[0] != target.out_features:
            raise AdapterError(
                f"{path}: {layer!r}'s pair has shapes A {list(a.shape)}, B {list(b.shape)}; "
                f"this model's layer needs A [r, {target.in_features}] and "
                f"B [{target.out_features}, r] (an adapter of another model?)")
        if rank > self.max_rank:
            raise AdapterError(f"{path}: LoRA rank {rank} is over --max-lora-rank "
                               f"{self.max_rank}")
        configured = _configured(path, config, layer, "r", "rank_pattern")
        if rank != configured:  # PEFT refuses to load it; vLLM would scale by the config's r
            raise AdapterError(f"{path}: {layer!r}'s pair has rank {rank}, but its r in "
                               f"{CONFIG_FILE} (r / rank_pattern) is {configured:g}")
        alpha = _configured(path, config, layer, "lora_alpha", "alpha_pattern")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(f"{path}: {layer!r}'s weights hold NaN or infinity")
        scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        return (a.to(self._device, self._dtype).contiguous(),
                b.to(self._device, self._dtype).contiguous(), scale)

    def add(self, adapter: Adapter) -> None:
        """Serve an adapter that ``read`` returned. Its weights go into the layers before its
        name is known, so no request of it runs without them."""
        with self._lock:
            if adapter.name in self.by_name:
                raise AdapterError(f"an adapter named '{adapter.name}' is already loaded")
            for layer, pair in adapter.pairs.items():
                self.layers[layer].pairs[adapter.id] = pair
            self.names[adapter.id] = adapter.name
            self.by_name[adapter.name] = adapter

    def remove(self, name: str) -> Adapter:
        """New requests may no longer name it; its weights stay while requests use them
        (``drop_retired``, from the engine thread)."""
        with self._lock:
            adapter = self.by_name.pop(name, None)
            if adapter is None:
                raise KeyError(name)
            self.retired.add(adapter.id)
        if self.on_retire is not None:
            self.on_retire()
        return adapter

    def pin(self, adapter_id: int) -> None:
        """Keep the adapter's weights while a request holds it (unloaded or replaced since
        included); the caller checked that requests may start with it."""
        with self._lock:
            self.pins[adapter_id] += 1

    def unpin(self, adapter_id: int) -> None:
        with self._lock:
            self.pins[adapter_id] -= 1
            if self.pins[adapter_id] <= 0:
                del self.pins[adapter_id]

    def present(self, adapter_id: int) -> bool:
        """Whether its weights are still held (a pinned request may go on with them)."""
        return adapter_id in self.names

    def drop_retired(self, in_use: set[int]) -> None:
        """Engine thread: free the weights of unloaded adapters no request uses or holds."""
        with self._lock:
            for adapter_id in [i for i in self.retired if i not in in_use and
                               i not in self.pins]:
                for layer in self.layers.values():
                    layer.pairs.pop(adapter_id, None)
                self.retired.discard(adapter_id)
                self.names.pop(adapter_id, None)

    def serves(self, adapter_id: int) -> bool:
        """Whether requests may still start with this adapter (loaded, not unloaded)."""
        return adapter_id in self.names and adapter_id not in self.retired

    def names_of(self, seqs: Any) -> tuple[str, ...]:
        """The names of the adapters these sequences use, sorted."""
        return tuple(sorted({self.names.get(s.lora, "") for s in seqs if s.lora}))

    def set_step(self, row_adapters: list[int]) -> bool:
        """Group the step's packed rows (each row's adapter id, 0 for the base model); whether
        any row uses an adapter."""
        used = sorted(set(row_adapters) - {0})
        if not used:
            self.rows.groups = []
            return False
        if len(used) == 1 and 0 not in row_adapters:
            self.rows.groups = [(used[0], None)]
        else:
            ids = torch.tensor(row_adapters)
            self.rows.groups = [(a, (ids == a).nonzero().flatten().to(self._device))
                                for a in used]
        return True

    def clear_step(self) -> None:
        self.rows.groups = []


def read_adapter(loras: LoraSet, name: str, uri: str, fetch: Callable[[str], Path]) -> Adapter:
    """Blocking: fetch the adapter's directory and read it; an AdapterError says why not."""
    try:
        path = fetch(uri)
    except StartupError as exc:
        raise AdapterError(str(exc)) from None
    return loras.read(name, path, given=uri)


def in_use(*groups: Any) -> set[int]:
    """The adapter ids of the sequences in these collections."""
    return {seq.lora for seq in itertools.chain(*groups) if seq.lora}
