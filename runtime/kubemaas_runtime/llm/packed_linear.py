"""Linear layers with their weights reordered once into oneDNN's blocked layout (CPU).

Nearly all of a language model's CPU time is its linear layers, and at the row counts an engine
step has (a few decode rows to a few hundred prompt tokens) torch's default ``F.linear`` leaves
much of the core idle: on a 190 M-parameter Llama (one thread, float32) the layers of one step
took 115 ms at 16 rows, and 98 ms with the weights prepacked for oneDNN (``bench/llm`` has the
figures). The reordered copy replaces the original (same bytes), so memory does not grow once the
file the weights were mapped from is let go (see ``pack_linears``). This
is what torch's own compiler does on CPU when it freezes a model, and what vLLM's CPU backend
does with its oneDNN matmul.

Applied to plain float32/bfloat16 ``nn.Linear`` weights of at least ``MIN_WEIGHTS`` on CPU only:
a quantized weight (the optimize step's int8) keeps its own kernel, and an output head tied to
the token embedding keeps the shared tensor. ``--packed-linear false`` turns it off.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("kubemaas.runtime.llm")

BATCH_HINT = 16  # the row count the layout is tuned for (it serves any)
# A oneDNN call costs ~20 us more than F.linear's, which small layers never win back (one thread,
# 16 rows: 128 x 128 weights 27 vs 10 us, 512 x 512 92 vs 111 us, 1024 x 1024 399 vs 772 us):
# smaller layers keep torch's linear.
MIN_WEIGHTS = 512 * 512


class PackedLinear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight_dtype = linear.weight.dtype
        self.packed: torch.Tensor
        self.bias: torch.Tensor | None
        # buffers, so that whoever counts the model's bytes counts these
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(
            linear.weight.detach(), BATCH_HINT), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none",
                                                               [], "")
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN"


def _packable(module: Any, head: Any) -> bool:
    return (type(module) is torch.nn.Linear and module is not head
            and module.in_features * module.out_features >= MIN_WEIGHTS
            and type(module.weight.data) is torch.Tensor
            and module.weight.dtype in (torch.float32, torch.bfloat16))


def pack_linears(model: Any) -> int:
    """Replace the model's packable linear layers in place; returns how many."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return 0
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    head = model.get_output_embeddings() if tied else None
    targets = [(name, module) for name, module in model.named_modules()
               if _packable(module, head)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PackedLinear(module))
    if targets:
        # the parameters left (embeddings, norms) may still be views of the memory-mapped
        # safetensors file, whose pages the reorder has read: copied off it, the mapping goes
        # and those pages with it (on the 190 M bench model: 2.2 GB resident -> 1.5 GB)
        with torch.no_grad():
            for param in model.parameters():
                param.data = param.data.clone()
    return len(targets)
