"""Engine steps replayed from graphs traced from the model's direct stack.

An engine step runs the same operations whenever its rows have the same structure (decode rows
or not, and how many prompt chunks, each with or without a cached prefix); only sizes differ
(the rows, the chunks' lengths, the context blocks). On a CPU the interpreter's work around each
kernel (module calls, transformers' Python in every layer) is a large share of a step of a small
model. ``TracedSteps`` records the direct stack's operations with ``torch.jit.trace`` into one
TorchScript graph per structure, every size read from the graph's inputs (packing.py and
attention.py keep no size as a plain number), and replays it for every later step of that
structure: the same kernels with the same arguments, so the logits are bit-identical
(tests/runtime/test_llm_traced_step.py, every step of changing batches), without the Python
between them. In process, against the direct stack alternated with it: the tiny benchmark
model's batch-16 decode step 0.63-0.71 of the time (batch 4: 0.52), the 190 M model's 0.84
(docs/llm.md, "Steps from traced graphs").

A graph's inputs are the step's tensors, the KV pools (written in place) and the oneDNN-packed
weights (opaque tensors a graph cannot hold as constants); the other weights are constants of
the graph (the same tensors, not copies). Each structure is traced at its first step and checked
there against that step's eager logits; a trace that fails, warns that it froze a value, or
differs leaves that structure eager, with a log line. Steps with more than ``MAX_CHUNKS``
prompt chunks (a burst read at once) run eagerly: each structure costs a trace.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from .attention import Chunk, PagedStep
from .decoder_stack import StepForward

log = logging.getLogger("kubemaas.runtime.llm")

MAX_CHUNKS = 4
Structure = tuple[bool, tuple[bool, ...]]  # decode rows or not; each chunk's mask or not


def traceable(model: Any, stack: StepForward | None, device: torch.device) -> bool:
    """Whether this model's steps may be traced: the direct stack on a CPU, with plain weights
    (a quantized model's tensor subclasses stay eager)."""
    return (stack is not None and device.type == "cpu"
            and all(type(p) in (torch.nn.Parameter, torch.Tensor) for p in model.parameters()))


def structure(step: PagedStep) -> Structure | None:
    if len(step.chunks) > MAX_CHUNKS:
        return None
    return bool(step.decode_rows), tuple(c.mask is not None for c in step.chunks)


def step_tensors(step: PagedStep) -> list[torch.Tensor]:
    """The step's tables in a fixed order for its structure (``rebuild`` reads them back)."""
    out = [step.write_slots]
    if step.decode_rows:
        assert step.decode_blocks is not None and step.decode_mask is not None
        out += [step.decode_blocks, step.decode_mask]
    for c in step.chunks:
        out += [c.slots, c.blocks] + ([] if c.mask is None else [c.mask])
    return out


def rebuild(shape: Structure, tensors: Iterator[torch.Tensor], like: PagedStep) -> PagedStep:
    """A step of ``shape`` over ``tensors`` (in ``step_tensors``'s order)."""
    has_decode, masks = shape
    write_slots = next(tensors)
    decode_blocks = next(tensors) if has_decode else None
    decode_mask = next(tensors) if has_decode else None
    chunks = []
    for has_mask in masks:
        slots, blocks = next(tensors), next(tensors)
        chunks.append(Chunk(slots, blocks, next(tensors) if has_mask else None))
    # (decode_rows only says whether there are any: attention reads the count from the table)
    return PagedStep(like.store, like.block_size, write_slots, int(has_decode), decode_blocks,
                     decode_mask, chunks)


class TracedSteps:
    def __init__(self, model: Any, stack: StepForward) -> None:
        self._stack = stack
        self._graphs: dict[Structure, Any] = {}  # None: that structure stays eager
        self.replays = 0  # steps a graph ran
        # oneDNN-packed weights are opaque tensors: the graphs take them as inputs
        self._opaque = [b for b in model.buffers() if b.is_mkldnn]
        for param in model.parameters():  # a graph holds no tensor that requires grad
            param.requires_grad_(False)

    @property
    def failed(self) -> bool:
        return any(graph is None for graph in self._graphs.values())

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                 step: PagedStep) -> torch.Tensor:
        """The step's logits: from its structure's graph, traced at the first such step."""
        shape = structure(step)
        if shape is None:
            return self._stack(input_ids, position_ids, keep, step)
        if shape not in self._graphs:
            return self._trace(shape, input_ids, position_ids, keep, step)
        graph = self._graphs[shape]
        if graph is None:
            return self._stack(input_ids, position_ids, keep, step)
        try:
            logits: torch.Tensor = graph(*self._inputs(input_ids, position_ids, keep, step))
        except Exception as exc:  # the eager step runs (and raises what it raises)
            return self._give_up(shape, f"a traced step failed: {exc}",
                                 self._stack(input_ids, position_ids, keep, step))
        self.replays += 1
        return logits

    def _inputs(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                step: PagedStep) -> tuple[torch.Tensor, ...]:
        return (input_ids, position_ids, keep, *step_tensors(step), *step.store.keys,
                *step.store.values, *self._opaque)

    def _trace(self, shape: Structure, input_ids: torch.Tensor, position_ids: torch.Tensor,
               keep: torch.Tensor, step: PagedStep) -> torch.Tensor:
        eager = self._stack(input_ids, position_ids, keep, step)
        stack, tables = self._stack, len(step_tensors(step))

        def replay(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                   *rest: torch.Tensor) -> torch.Tensor:
            # rest: the step's tables, then the pools and the opaque weights, the very tensors
            # the modules read (the tracer knows them by identity and makes them inputs)
            return stack(input_ids, position_ids, keep, rebuild(shape, iter(rest[:tables]), step))

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.trace is deprecated"
                warnings.simplefilter("error", torch.jit.TracerWarning)  # type: ignore[attr-defined]
                # (a TracerWarning says a value got frozen into the graph: not this graph)
                inputs = self._inputs(input_ids, position_ids, keep, step)
                graph = torch.jit.trace(replay, inputs,  # type: ignore[no-untyped-call]
                                        check_trace=False)
            replayed = graph(*inputs)
        except Exception as exc:  # any failure to trace leaves the structure eager
            return self._give_up(shape, f"the trace failed: {exc}", eager)
        if not torch.equal(replayed, eager):
            return self._give_up(shape, "the traced step's logits differ from the eager step's",
                                 eager)
        self._graphs[shape] = graph
        log.info("steps of this structure run from a traced graph",
                 extra={"fields": {"decode_rows": shape[0], "chunks": len(shape[1])}})
        return eager

    def _give_up(self, shape: Structure, why: str, eager: torch.Tensor) -> torch.Tensor:
        self._graphs[shape] = None
        log.warning("steps of this structure stay eager: %s", why,
                    extra={"fields": {"decode_rows": shape[0], "chunks": len(shape[1])}})
        return eager
