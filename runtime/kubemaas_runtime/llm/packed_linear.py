"""Linear layers with their weights reordered once into oneDNN's blocked layout (CPU).

Nearly all of a language model's CPU time is its linear layers, and at the row counts an engine
step has (a few decode rows to a few hundred prompt tokens) torch's default ``F.linear`` leaves
much of the core idle: on a 190 M-parameter Llama (one thread, float32) the layers of one step
took 115 ms at 16 rows, and 98 ms with the weights prepacked for oneDNN (``bench/llm`` has the
figures). The reordered copy replaces the original (same bytes), so memory does not grow once the
file the weights were mapped from is let go (see ``pack_linears``). This
is what torch's own compiler does on CPU when it freezes a model, and what vLLM's CPU backend
does with its oneDNN matmul.

Sibling layers that read the same input (q/k/v, gate/up) are packed as one weight and run as
one call (``FusedLinears``): a prompt's step runs faster that way (the bench model's 640-token
prefill step ~1,230 -> ~1,090 ms), a decode step about the same.

Applied to plain float32/bfloat16 ``nn.Linear`` weights of at least ``MIN_WEIGHTS`` on CPU only:
a quantized weight (the optimize step's int8) keeps its own kernel, and an output head tied to
the token embedding keeps the shared tensor. bfloat16 weights only where oneDNN has a bfloat16
kernel for the CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT: torch's own check); elsewhere (an
AVX2-only CPU) the reorder raises, and those layers keep torch's linear. ``--packed-linear
false`` turns it off.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional, Union

import torch

log = logging.getLogger("kubemaas.runtime.llm")

BATCH_HINT = 16  # the row count the layout is tuned for (it serves any)
# A oneDNN call costs ~20 us more than F.linear's, which small layers never win back (one thread,
# 16 rows: 128 x 128 weights 27 vs 10 us, 512 x 512 92 vs 111 us, 1024 x 1024 399 vs 772 us):
# smaller layers keep torch's linear.
MIN_WEIGHTS = 512 * 512
# Families whose attention calls q/k/v, and whose MLP calls gate/up, with the same tensor (their
# transformers forwards; tests/unit/test_packed_linear.py checks each computes once per group).
FUSED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "olmo2")
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class PackedLinear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight_dtype = linear.weight.dtype
        self.packed: torch.Tensor
        self.bias: torch.Tensor | None
        # buffers, so that whoever counts the model's bytes counts these
        self.register_buffer("packed", _reorder(linear.weight.detach()), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN"


class FusedLinears(torch.nn.Module):
    """Sibling layers that read the same input, packed as one weight: one oneDNN call serves
    them all (on the 190 M bench model, q/k/v and gate/up fused: 16 layers' projections at 16
    rows 27.5 -> 26.3 ms, one thread). The first part called with an input computes every
    part's output; its siblings, called with the same tensor, take theirs (column views);
    called with another tensor, a part computes again, so the answer never depends on the
    order the model calls them in."""

    def __init__(self, linears: list[torch.nn.Linear]) -> None:
        super().__init__()
        self.sizes = [linear.out_features for linear in linears]
        self.packed: torch.Tensor
        self.bias: torch.Tensor | None
        weight = torch.cat([linear.weight.detach() for linear in linears])
        self.register_buffer("packed", _reorder(weight), persistent=False)
        bias = None
        if any(linear.bias is not None for linear in linears):
            bias = torch.cat([torch.zeros(linear.out_features, dtype=weight.dtype)
                              if linear.bias is None else linear.bias.detach()
                              for linear in linears])
        self.register_buffer("bias", bias, persistent=False)
        self._input: torch.Tensor | None = None
        self._outputs: tuple[torch.Tensor, ...] = ()
        self._left = 0

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if x is not self._input:
            self._outputs = torch.split(_linear(x, self.packed, self.bias), self.sizes, -1)
            self._input, self._left = x, len(self.sizes)
        out = self._outputs[index]
        self._left -= 1
        if self._left == 0:  # every sibling served: hold no tensor past the forward
            self._input, self._outputs = None, ()
        return out


class FusedPart(torch.nn.Module):
    def __init__(self, group: FusedLinears, index: int, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.group = group
        self.index = index
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.output(x, self.index)

    def extra_repr(self) -> str:
        return f"part {self.index} of {len(self.group.sizes)}, oneDNN"


def _reorder(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, BATCH_HINT)  # type: ignore[no-any-return]


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if torch.jit.is_tracing():  # type: ignore[attr-defined,no-untyped-call]  # traced_decode.py
        return _scripted_linear()(x, packed, bias)  # type: ignore[no-any-return]
    return torch.ops.mkldnn._linear_pointwise(  # type: ignore[no-any-return]
        x, packed, bias, "none", [], "")


@functools.cache
def _scripted_linear() -> Any:
    """The same oneDNN call as a TorchScript function, for a traced graph to call: the tracer
    cannot record the op's (empty) list of optional scalars; a scripted function types it."""
    return torch.jit.script(_linear_script)


def _linear_script(x: torch.Tensor, packed: torch.Tensor,
                   bias: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: UP045 - TorchScript
    # TorchScript's "number" (Scalar) is this union; it reads the annotations from the source
    scalars: list[Optional[Union[int, float, complex]]] = []  # noqa: UP007, UP045
    return torch.ops.mkldnn._linear_pointwise(  # type: ignore[no-any-return]
        x, packed, bias, "none", scalars, "")


@functools.cache
def packable_dtypes() -> tuple[torch.dtype, ...]:
    """The weight dtypes oneDNN can reorder and multiply on this CPU."""
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.float32, torch.bfloat16
    return (torch.float32,)


def _packable(module: Any, head: Any) -> bool:
    return (type(module) is torch.nn.Linear and module is not head
            and module.in_features * module.out_features >= MIN_WEIGHTS
            and type(module.weight.data) is torch.Tensor
            and module.weight.dtype in packable_dtypes())


def _fuse_siblings(model: Any, head: Any) -> int:
    """Fuse the sibling projections of the families whose forwards call them with one tensor."""
    if getattr(model.config, "model_type", None) not in FUSED_FAMILIES:
        return 0
    fused = 0
    for module in list(model.modules()):
        for names in SIBLINGS:
            found: list[Any] = [getattr(module, name, None) for name in names]
            layers = [layer for layer in found if _packable(layer, head)]
            if len(layers) < len(names) \
                    or len({(layer.in_features, layer.weight.dtype) for layer in layers}) != 1:
                continue
            group = FusedLinears(layers)
            for index, (name, layer) in enumerate(zip(names, layers, strict=True)):
                setattr(module, name, FusedPart(group, index, layer))
            fused += len(layers)
    return fused


def pack_linears(model: Any) -> int:
    """Replace the model's packable linear layers in place; returns how many."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return 0
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    head = model.get_output_embeddings() if tied else None
    fused = _fuse_siblings(model, head)
    targets = [(name, module) for name, module in model.named_modules()
               if _packable(module, head)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PackedLinear(module))
    if targets or fused:
        # the parameters left (embeddings, norms) may still be views of the memory-mapped
        # safetensors file, whose pages the reorder has read: copied off it, the mapping goes
        # and those pages with it (on the 190 M bench model: 2.2 GB resident -> 1.5 GB)
        with torch.no_grad():
            for param in model.parameters():
                param.data = param.data.clone()
    return fused + len(targets)
