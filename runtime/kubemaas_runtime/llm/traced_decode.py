"""Decode steps, and steps of decodes and one run of short prompt chunks, replayed from graphs
traced from the model's direct stack.

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

Most of the other steps under load add the prompts that arrived meanwhile to the decodes: on a
CPU a short chunk, or a run of them, attends as one ``ChunkBatch`` whose layout is in tensors
(packing.py), so a second graph takes those four tensors too and replays every step of decode
rows and one such batch, whatever its chunks' number and lengths. A model whose layers mix a
sliding window and full attention (Qwen2/Qwen3 with ``max_window_layers``) gives its graphs the
windowed layers' tables and masks too (``PagedStep.window_decode_blocks``, a batch's
``window_blocks``); which layers are windowed is fixed in the graph. Other steps (prompts alone,
a long chunk, several calls, decode rows in groups, LoRA adapters) run eagerly.

The graphs' inputs are the step's tensors, the KV pools (written in place) and the oneDNN-packed
weights (opaque tensors a graph cannot hold as constants); the other weights are constants of the
graph (the same tensors, not copies). Each graph is traced at the first step of its kind (the
server's warm-up makes one of each) and checked then against that step's eager logits; a trace
that fails, warns that it froze a value, or differs leaves the engine eager, with a log line.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from .attention import ChunkBatch, PagedStep
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
        # a graph per way the step reads the decode rows' contexts (from the pools or from the
        # lanes, decode_lanes.py) and whether it also reads a batch of prompt chunks
        self._graphs: dict[tuple[bool, bool], Any] = {}
        self.failed = False
        self.replays = 0  # steps a graph ran
        self.replays_with_prompts = 0  # of them, steps that also read prompt chunks
        # oneDNN-packed weights are opaque tensors: the graph takes them as inputs
        self._opaque = [b for b in model.buffers() if b.is_mkldnn]
        for param in model.parameters():  # a graph holds no tensor that requires grad
            param.requires_grad_(False)

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                 step: PagedStep) -> torch.Tensor:
        """The step's logits: from a graph when one serves the step, else eagerly."""
        servable, prompts = _prompt_batch(step)
        if not servable or not step.decode_rows or step.decode_groups or self.failed:
            return self._stack(input_ids, position_ids, keep, step)
        kind = (step.lanes is not None, prompts is not None)
        graph = self._graphs.get(kind)
        if graph is None:
            return self._trace(input_ids, position_ids, keep, step, prompts)
        try:
            logits: torch.Tensor = graph(*self._inputs(input_ids, position_ids, keep, step,
                                                       prompts))
        except Exception as exc:  # the eager step runs (and raises what it raises)
            return self._give_up(f"a traced step failed: {exc}",
                                 self._stack(input_ids, position_ids, keep, step))
        self.replays += 1
        self.replays_with_prompts += prompts is not None
        return logits

    def _inputs(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                step: PagedStep, prompts: ChunkBatch | None) -> tuple[torch.Tensor, ...]:
        mixed = bool(step.sliding)  # the windowed layers' tables and masks too
        extra: list[torch.Tensor | None] = [step.decode_blocks, step.decode_mask]
        if mixed:
            extra += [step.window_decode_blocks, step.window_decode_mask]
            if step.window_write_slots is not None:  # two KV groups (kv_groups.py)
                extra.append(step.window_write_slots)
        if prompts is not None:
            extra += [prompts.rows, prompts.blocks, prompts.mask, prompts.real]
            if mixed:
                extra += [prompts.window_mask, prompts.window_blocks]
        given = [t for t in extra if t is not None]
        if len(given) != len(extra):
            raise ValueError("a step without the tables its graph takes")
        lanes = [] if step.lanes is None else [
            t[layer] for t in (step.lanes.keys, step.lanes.values) for layer in step.lanes.layers]
        return (input_ids, position_ids, keep, step.write_slots, *given, *step.store.keys,
                *step.store.values, *lanes, *self._opaque)

    def _trace(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
               step: PagedStep, batch: ChunkBatch | None) -> torch.Tensor:
        eager = self._stack(input_ids, position_ids, keep, step)
        layers = len(step.store.keys)
        stack, store, block_size, rows = self._stack, step.store, step.block_size, step.decode_rows
        lanes, prompts, sliding = step.lanes, batch is not None, step.sliding
        # the windowed layers' decode table and mask, and with two KV groups their slots
        grouped = step.window_write_slots is not None
        windows = (3 if grouped else 2) if sliding else 0
        per_batch = (6 if sliding else 4) * prompts  # ChunkBatch's fields, in order

        def replay(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor,
                   write_slots: torch.Tensor, decode_blocks: torch.Tensor,
                   decode_mask: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
            # rest: the windowed layers' decode tensors and the prompt batch's, then the
            # pools, the lanes and the opaque weights, the very tensors the modules read (the
            # tracer knows them by identity and makes them inputs)
            window = rest[:windows] or (None, None, None)
            given = ChunkBatch(*rest[windows:windows + per_batch]) if prompts else None
            assert len(rest) == windows + per_batch + 2 * layers + len(self._opaque) + (
                0 if lanes is None else 2 * len(lanes.layers))
            # (the attention reads the decode rows' count from their block table's shape)
            traced = PagedStep(store, block_size, write_slots, rows, decode_blocks, decode_mask,
                               units=None if given is None else [given], lanes=lanes,
                               decode_positions=None if lanes is None
                               else position_ids[0, :decode_blocks.shape[0]],
                               sliding=sliding, window_decode_blocks=window[0],
                               window_decode_mask=window[1],
                               window_write_slots=window[2] if grouped else None)
            return stack(input_ids, position_ids, keep, traced)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.trace is deprecated"
                warnings.simplefilter("error", torch.jit.TracerWarning)  # type: ignore[attr-defined]
                # (a TracerWarning says a value got frozen into the graph: not this graph)
                inputs = self._inputs(input_ids, position_ids, keep, step, batch)
                graph = torch.jit.trace(replay, inputs,  # type: ignore[no-untyped-call]
                                        check_trace=False)
            replayed = graph(*inputs)
        except Exception as exc:  # any failure to trace leaves the engine eager
            return self._give_up(f"the trace failed: {exc}", eager)
        if not torch.equal(replayed, eager):
            return self._give_up("the traced step's logits differ from the eager step's", eager)
        self._graphs[(lanes is not None, prompts)] = graph
        log.info("decode steps %s%srun from a traced graph",
                 "reading the decode lanes " if lanes is not None else "",
                 "with a batch of prompt chunks " if prompts else "")
        return eager

    def _give_up(self, why: str, eager: torch.Tensor) -> torch.Tensor:
        self.failed = True
        log.warning("decode steps stay eager: %s", why)
        return eager


def _prompt_batch(step: PagedStep) -> tuple[bool, ChunkBatch | None]:
    """Whether a graph may serve the step's prompt chunks (none, or one batch of them), and
    that batch."""
    if not step.chunks:
        return True, None
    units = step.units
    if units is None or len(units) != 1 or not isinstance(units[0], ChunkBatch):
        return False, None
    return True, units[0]
