"""Decode-only engine steps replayed from one graph traced from the model's direct stack.

Under load most engine steps only decode: one token for each running sequence, the same
operations in the same order every time; only sizes differ (the rows, the context blocks). On a
CPU the interpreter's work around each kernel (module calls, transformers' Python in every layer)
is a large share of such a step. ``TracedDecode`` records the direct stack's operations once
with ``torch.jit.trace`` into a TorchScript graph whose sizes are read from its inputs, and
replays that graph for every decode-only step: the same kernels with the same arguments, so the
logits are bit-identical (tests/runtime/test_llm_traced_decode.py, every step of changing
batches and context widths), without the Python between them. In process, against the direct
stack alternated with it: the tiny benchmark model's batch-16 decode step 0.71 of the time
(batch 4: 0.52), the 190 M model's 0.84-0.86 (docs/llm.md, "Decode steps from a traced graph").

The graph's inputs are the step's tensors, the KV pools (written in place) and the oneDNN-packed
weights (opaque tensors a graph cannot hold as constants); the other weights are constants of the
graph (the same tensors, not copies). Steps that also read prompt chunks run eagerly: their
chunk list shapes the Python of the attention. The graph is traced at the first decode-only
step (the server's warm-up) and checked then against that step's eager logits; a trace that
fails, warns that it froze a value, or differs leaves the engine eager, with a log line.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from .attention import PagedStep
from .decoder_stack import StepForward

log = logging.getLogger("kubemaas.runtime.llm")


def traceable(model: Any, stack: StepForward | None, device: torch.device) -> bool:
    """Whether decode steps of this model may be traced: the direct stack on a CPU, with plain
    weights (a quantized model's tensor subclasses stay eager)."""
    return (stack is not None and device.type == "cpu"
            and all(type(p) in (torch.nn.Parameter, torch.Tensor) for p in model.parameters()))


class TracedDecode:
    def __init__(self, model: Any, stack: StepForward) -> None:
        self._stack = stack
        # one graph per way the step reads the decode rows' contexts: from the pools (False)
        # or from the lanes (True, decode_lanes.py)
        self._graphs: dict[bool, Any] = {}
        self.failed = False
        self.replays = 0  # decode steps the graph ran
        # oneDNN-packed weights are opaque tensors: the graph takes them as inputs
        self._opaque = [b for b in model.buffers() if b.is_mkldnn]
        for param in model.parameters():  # a graph holds no tensor that requires grad
            param.requires_grad_(False)

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                 step: PagedStep) -> torch.Tensor:
        """The step's logits: from the graph for a decode-only step, else eagerly."""
        if step.chunks or not step.decode_rows or step.decode_groups or self.failed:
            return self._stack(input_ids, position_ids, keep, step)
        graph = self._graphs.get(step.lanes is not None)
        if graph is None:
            return self._trace(input_ids, position_ids, keep, step)
        try:
            logits: torch.Tensor = graph(*self._inputs(input_ids, position_ids, keep, step))
        except Exception as exc:  # the eager step runs (and raises what it raises)
            return self._give_up(f"a traced step failed: {exc}",
                                 self._stack(input_ids, position_ids, keep, step))
        self.replays += 1
        return logits

    def _inputs(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                step: PagedStep) -> tuple[torch.Tensor, ...]:
        lanes = [] if step.lanes is None else step.lanes.keys + step.lanes.values
        return (input_ids, position_ids, keep, step.write_slots, step.decode_blocks,
                step.decode_mask, *step.store.keys, *step.store.values, *lanes, *self._opaque)

    def _trace(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
               step: PagedStep) -> torch.Tensor:
        eager = self._stack(input_ids, position_ids, keep, step)
        layers = len(step.store.keys)
        stack, store, block_size, rows = self._stack, step.store, step.block_size, step.decode_rows
        lanes = step.lanes

        def decode(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                   write_slots: torch.Tensor, decode_blocks: torch.Tensor,
                   decode_mask: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
            # rest: the pools, the lanes and the opaque weights, the very tensors the modules
            # read (the tracer knows them by identity and makes them inputs)
            assert len(rest) == (2 if lanes is None else 4) * layers + len(self._opaque)
            # (the attention reads a decode-only step's row count from the query's shape)
            traced = PagedStep(store, block_size, write_slots, rows, decode_blocks, decode_mask,
                               lanes=lanes,
                               decode_positions=None if lanes is None else position_ids[0])
            return stack(input_ids, position_ids, keep, traced)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.trace is deprecated"
                warnings.simplefilter("error", torch.jit.TracerWarning)  # type: ignore[attr-defined]
                # (a TracerWarning says a value got frozen into the graph: not this graph)
                inputs = self._inputs(input_ids, position_ids, keep, step)
                graph = torch.jit.trace(decode, inputs,  # type: ignore[no-untyped-call]
                                        check_trace=False)
            replayed = graph(*inputs)
        except Exception as exc:  # any failure to trace leaves the engine eager
            return self._give_up(f"the trace failed: {exc}", eager)
        if not torch.equal(replayed, eager):
            return self._give_up("the traced step's logits differ from the eager step's", eager)
        self._graphs[lanes is not None] = graph
        log.info("decode steps %srun from a traced graph",
                 "reading the decode lanes " if lanes is not None else "")
        return eager

    def _give_up(self, why: str, eager: torch.Tensor) -> torch.Tensor:
        self.failed = True
        log.warning("decode steps stay eager: %s", why)
        return eager
