"""The LLM engine: one thread that owns the model and the KV cache and runs step after step.

The event loop talks to it through ``submit`` (a new request; returns a ``RequestStream`` to
iterate) and ``RequestStream.cancel`` (a client went away: its blocks are freed before the next
step). Each step, the scheduler picks the rows; decode rows (one token each) and prefill chunks
run as one forward pass over the rows packed into one sequence (packing.py, attention.py; a
step of decodes, alone or with a batch of prompt chunks on a CPU, replays a recorded graph
where the model allows: traced_decode.py on a CPU, cuda_graphs.py on a GPU); the new tokens
are sampled, detokenized and handed to the event loop in one ``call_soon_threadsafe`` per
step. Nothing here runs on the event loop.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import torch

from . import longrope
from .cuda_graphs import GraphedDecode
from .decode_lanes import DecodeLanes
from .decoder_stack import StepForward
from .detok import Detokenizer, decoder
from .kv_cache import cache_root
from .kv_groups import check_holds_one_sequence, kv_pools, kv_store
from .loader import LanguageModel
from .lora import AdapterError, in_use
from .outcome import advance, fail_sequence, prompt_only
from .pacing import PrefillPacer
from .packing import decode_groups, pack
from .prompt_scores import score
from .queue_room import QueueRoom, Reservation
from .request_stream import Delta, RequestStream
from .sampling import SamplingParams, sample
from .scheduler import Scheduler, Sequence, mixed
from .traced_decode import TracedDecode, traceable
from .worker import EngineThread

log = logging.getLogger("kubemaas.runtime.llm")


@dataclass(frozen=True)
class EngineConfig:
    kv_cache_bytes: int
    max_model_len: int
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    # requests held (waiting + running; a beam search: its width) before new ones are refused
    max_queue: int = 256
    prefix_caching: bool = True
    prefill_share: float = 1.0  # > 0: a mixed step's prefill may take this share of a decode step
    # An idle engine that receives a request waits until requests stop arriving (no new one for
    # arrival_gap seconds), at most arrival_window seconds, and reads them in one step. 0: at once.
    arrival_window: float = 0.010
    arrival_gap: float = 0.001
    # decode-only steps from a recorded graph where the model allows (TorchScript on a CPU,
    # CUDA graphs on a GPU)
    traced_decode: bool = True
    # on CPU: the decode rows' keys and values also kept contiguous per row, in up to as many
    # bytes as the KV cache (decode_lanes.py)
    decode_lanes: bool = True
    scheduling_policy: str = "fcfs"  # or "priority": requests' priorities order the queue
    # a model whose layers mix a sliding window and full attention: two KV groups, the
    # windowed layers' blocks given back as they leave the window (kv_groups.py)
    kv_groups: bool = False
    # with kv_groups: both groups' blocks from one pool of pages (kv_shared.py); False: the
    # budget split between them once, at start
    kv_shared: bool = True


class Engine(EngineThread):
    def __init__(self, lm: LanguageModel, cfg: EngineConfig) -> None:
        super().__init__("kubemaas-llm-engine")
        self.lm = lm
        self.cfg = cfg
        longrope.pin(lm.model, cfg.max_model_len)  # before any graph records its frequencies
        # layers that mix a window and full attention, with kv_groups: two KV groups
        self.pool, self.window_pool, groups = kv_pools(
            lm, cfg.kv_cache_bytes, cfg.block_size, cfg.max_model_len, cfg.prefix_caching,
            cfg.kv_groups, cfg.kv_shared)
        # every layer windowed: a sequence holds the blocks of its window alone (scheduler.py)
        window = lm.window if not lm.sliding else None
        self.scheduler = Scheduler(self.pool, cfg.max_num_seqs, cfg.max_num_batched_tokens,
                                   priority=cfg.scheduling_policy == "priority",
                                   max_loras=lm.loras.max_loras if lm.loras else 0,
                                   window=window, mixed=mixed(lm.window, lm.sliding, lm.num_layers),
                                   window_pool=self.window_pool)
        check_holds_one_sequence(cfg.kv_cache_bytes, cfg.max_model_len, self.scheduler)
        self.store = kv_store(lm, self.pool, groups)
        self.loras = lm.loras
        self._retiring = False  # an adapter was unloaded: free its weights, idle or not
        if self.loras is not None:
            self.loras.on_retire = self._retire
        self.pacer = PrefillPacer(cfg.prefill_share, floor=cfg.block_size,
                                  ceiling=cfg.max_num_batched_tokens)
        self.scheduler.prefill_cap = self.pacer.cap
        self.traced: TracedDecode | None = None
        self.graphed: GraphedDecode | None = None
        stack = lm.stack if cfg.traced_decode else None
        if stack is not None and traceable(lm.model, stack, lm.device):
            self.traced = TracedDecode(lm.model, stack)
        elif stack is not None and lm.device.type == "cuda":
            self.graphed = GraphedDecode(stack, self.store, cfg.block_size, lm.vocab_size,
                                         cfg.max_num_seqs, sliding=lm.sliding, window=lm.window,
                                         grouped=groups is not None)
        # (not with a window on every layer: a lane holds a row's whole context, while the
        # rows' tables then start at their windows, packing._decode_tables)
        # (a model whose layers mix windows: lanes for its full layers alone, the windowed
        # ones read their windows from the pool)
        full = [i for i in range(lm.num_layers) if i not in lm.sliding]
        self.lanes = DecodeLanes(self.store, cfg.block_size, cfg.kv_cache_bytes, full) \
            if cfg.decode_lanes and lm.device.type == "cpu" and window is None else None
        self._model_step: StepForward = self.traced or self.graphed or lm.forward
        self._ids = itertools.count(1)
        self._decode = decoder(lm.tokenizer)
        self._decode_special = decoder(lm.tokenizer, skip_special=False)
        self._inbox: deque[tuple[str, Sequence]] = deque()
        self.room = QueueRoom(cfg.max_queue)  # the queue limit (event loop's count)
        # read by /metrics (plain numbers, written by the engine thread)
        self.num_waiting = 0
        self.num_running = 0
        self.kv_usage = 0.0
        self.lanes_bytes = 0  # the decode lanes' tensors (decode_lanes.py)
        self.steps = 0
        self.peak_running = 0  # most sequences that ran in one step
        self.step_tokens: Counter[int] = Counter()  # tokens in a step -> steps
        self.prefill_tokens = 0  # prompt tokens computed, and tokens sampled, since the start
        self.sampled_tokens = 0  # (the periodic stats record: stats_log.py)
        # with LoRA: the adapters of the running and of the waiting sequences (names)
        self.lora_running: tuple[str, ...] = ()
        self.lora_waiting: tuple[str, ...] = ()

    # ---- event-loop side -------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams,
               cache_salt: str | None = None, matcher: Any = None,
               priority: int = 0, lora: int = 0, pinned: bool = False,
               within: Reservation | None = None) -> RequestStream:
        """A new request; ``cache_salt``: it shares cached prompt blocks only with requests
        that carry the same salt; ``matcher``: the grammar its output follows (structured.py;
        one per sequence); ``priority``: its place in a priority-scheduled queue; ``lora``:
        the id of the LoRA adapter it runs with (0: the base model); ``pinned``: a request
        that holds the adapter (LoraSet.pin) goes on with it, unloaded since or not;
        ``within``: a beam search's reservation the request goes in under (never refused
        for room, not counted again)."""
        if within is None:
            self.room.check()
        if lora and (self.loras is None or not (
                self.loras.present(lora) if pinned else self.loras.serves(lora))):
            raise AdapterError("the LoRA adapter was unloaded")
        seq = self.sequence(prompt, params, matcher)
        seq.cache_root = cache_root(cache_salt, lora)
        seq.priority = priority
        seq.lora = lora
        seq.counted = within is None
        assert within is None or not within.released, "a step after its search ended"
        stream = RequestStream(self, seq)
        seq.sink = stream.put
        if seq.counted:
            self.room.take()
        self._post("add", seq)
        return stream

    def reserve(self, count: int) -> Reservation:
        """A beam search's places in the queue (Overloaded when they are not free)."""
        return self.room.reserve(count)

    def sequence(self, prompt: list[int], params: SamplingParams, matcher: Any = None
                 ) -> Sequence:
        """A sequence of this engine's (submitted, or the record of a beam search's answer)."""
        decode = self._decode if params.skip_special_tokens else self._decode_special
        seq = Sequence(next(self._ids), prompt, params, sink=lambda _: None,
                       detok=Detokenizer(self.lm.tokenizer, params.stop, decode,
                                         params.include_stop_str_in_output))
        state = seq.sample_state
        assert state is not None  # made with the sequence
        state.matcher = matcher
        if params.repetition_penalty != 1.0:  # the prompt's tokens are penalized too
            state.prompt = frozenset(prompt)
        if params.min_tokens:  # what may not be drawn before min_tokens
            eos = frozenset() if params.ignore_eos else self.lm.eos_ids
            state.held_back = eos.union(params.stop_token_ids)
        return seq

    def abort(self, seq: Sequence) -> None:
        self._post("abort", seq)

    def _retire(self) -> None:
        with self._wake:
            self._retiring = True
            self._wake.notify()

    def _post(self, what: str, seq: Sequence) -> None:
        with self._wake:
            self._inbox.append((what, seq))
            self._wake.notify()

    def _deliver(self, items: list[tuple[Sequence, Delta | BaseException]]) -> None:
        for seq, item in items:
            if seq.counted and (isinstance(item, BaseException) or
                                item.finish_reason is not None):
                self.room.give()
            seq.sink(item)

    # ---- engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            inbox = self._take_inbox()
            if inbox is None:
                return
            self._apply(inbox)
            try:
                out = self.step()
            except Exception as exc:  # fail the running requests, keep serving others
                log.exception("engine step failed")
                out = self._fail_running(exc)
            if out and self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: exiting
                    self._loop.call_soon_threadsafe(self._deliver, out)

    def _take_inbox(self) -> list[tuple[str, Sequence]] | None:
        """What the event loop posted since the last step, once there is work (None: stop)."""
        with self._wake:
            idle = not self._has_work()
            while not self._stopped and not self._inbox and not self._has_work() and \
                    not self._retiring:
                self._wake.wait()
            self._retiring = False  # the step that follows (maybe empty) publishes and frees
            if idle and self._inbox and self.cfg.arrival_window > 0:
                self._let_arrivals_land()
            if self._stopped:
                return None
            inbox = list(self._inbox)
            self._inbox.clear()
        return inbox

    def _let_arrivals_land(self) -> None:
        """Requests often arrive together: a client's batch, or a closed loop whose requests
        finished in the same step. Read one at a time, the first ones start decoding a step
        ahead, and the rest are then read beside them (one long gap for those streams, or, when
        the pacer spreads the prompts, a batch that never decodes in step again). So an idle
        engine waits while requests keep coming: each one posted within ``arrival_gap`` of the
        last extends the wait, up to ``arrival_window`` in all. A lone request waits one gap.
        Called with ``_wake`` held; nothing is decoding, so no stream waits for this."""
        deadline = time.monotonic() + self.cfg.arrival_window
        seen = len(self._inbox)
        while not self._stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(min(self.cfg.arrival_gap, left))
            if len(self._inbox) == seen:
                return
            seen = len(self._inbox)

    def _has_work(self) -> bool:
        return bool(self.scheduler.waiting or self.scheduler.running)

    def _apply(self, inbox: list[tuple[str, Sequence]]) -> None:
        for what, seq in inbox:
            if what == "add":
                self.scheduler.add(seq)
            elif seq.finish_reason is None:
                seq.finish_reason = "abort"
                self.scheduler.remove(seq)
                if self._loop is not None:
                    item: list[tuple[Sequence, Delta | BaseException]] = [(seq, Delta(
                        "", (), (), "abort", len(seq.prompt), len(seq.output),
                        time.monotonic()))]
                    self._loop.call_soon_threadsafe(self._deliver, item)
        self._publish()

    def _fail_running(self, exc: Exception) -> list[tuple[Sequence, Delta | BaseException]]:
        out: list[tuple[Sequence, Delta | BaseException]] = []
        for seq in list(self.scheduler.running):
            seq.finish_reason = "error"
            self.scheduler.remove(seq)
            out.append((seq, exc))
        self._publish()
        return out

    def reset_stats(self) -> None:
        """The counters the metrics read, back to zero."""
        self.step_tokens.clear()
        self.pool.queried_tokens = self.pool.hit_tokens = 0
        self.scheduler.preemptions = self.peak_running = 0

    def _publish(self) -> None:
        self.num_waiting = len(self.scheduler.waiting)
        self.num_running = len(self.scheduler.running)
        self.peak_running = max(self.peak_running, self.num_running)
        # two KV groups: the fuller group's (a request waits when either is short)
        self.kv_usage = max(self.pool.usage(), self.window_pool.usage()) \
            if self.window_pool is not None else self.pool.usage()
        if self.lanes is not None:
            if not self.scheduler.running:  # idle: the lanes' memory goes back
                self.lanes.clear()
            self.lanes_bytes = self.lanes.nbytes
        if self.loras is not None:
            self.lora_running = self.loras.names_of(self.scheduler.running)
            self.lora_waiting = self.loras.names_of(self.scheduler.waiting)
            if self.loras.retired:  # unloaded adapters: their weights go once nothing uses them
                with self._wake:
                    posted = [seq for _, seq in self._inbox]
                self.loras.drop_retired(in_use(self.scheduler.waiting, self.scheduler.running,
                                               posted))

    def step(self) -> list[tuple[Sequence, Delta | BaseException]]:
        plan = self.scheduler.schedule()
        out: list[tuple[Sequence, Delta | BaseException]] = []
        if plan:
            reads = plan.reads()
            t0 = time.perf_counter()
            with torch.inference_mode():
                self._forward(plan.decode, plan.prefill, out)
            prefill_tokens = sum(n for _, n in plan.prefill)
            tokens = len(plan.decode) + prefill_tokens
            self.pacer.observe(time.perf_counter() - t0, tokens, reads)
            self.step_tokens[tokens] += 1
            self.prefill_tokens += prefill_tokens
            self.steps += 1
        self._publish()
        return out

    def _forward(self, decode: list[Sequence], prefill: list[tuple[Sequence, int]],
                 out: list[tuple[Sequence, Delta | BaseException]]) -> None:
        """One forward pass over the step's rows packed together (packing.py)."""
        groups = lanes = None
        if self.lm.device.type == "cpu":  # on a GPU a step's launches cost more than padding
            decode, groups = decode_groups(decode, self.cfg.block_size)
        if self.lanes is not None:
            arranged = self.lanes.for_step(decode, groups is not None)
            if arranged is not None:
                decode, lanes = arranged, self.lanes
        step = pack(decode, prefill, self.store, self.cfg.block_size, groups, self.lm.window,
                    self.lm.sliding, trim=lanes is None)
        if lanes is not None:
            step.paged.lanes = lanes
            step.paged.decode_positions = step.position_ids[0, :len(decode)]
        dev = self.lm.device
        model_step = self._model_step
        if self.loras is not None and self.loras.set_step(
                [s.lora for s in decode] + [a for s, n in prefill for a in [s.lora] * n]):
            model_step = self.lm.forward  # the traced graph has no adapters
        try:
            logits = model_step(step.input_ids.to(dev), step.position_ids.to(dev),
                                step.keep.to(dev), step.paged.to(dev))
        finally:
            if self.loras is not None:
                self.loras.clear_step()
        for seq, n in [(s, 1) for s in decode] + prefill:
            seq.computed += n
            seq.registered = self.pool.register(seq.blocks, seq.ids, seq.registered,
                                                seq.computed, seq.cache_root)
            if self.window_pool is not None and seq.window_blocks is not None:
                seq.window_registered = self.window_pool.register(
                    seq.window_blocks, seq.ids, seq.window_registered, seq.computed,
                    seq.cache_root)
        if self.scheduler.window is not None or self.window_pool is not None:
            # (after registering: the freed stay cached)
            for seq in decode:
                self.scheduler.slide(seq)
            for seq, _ in prefill:
                self.scheduler.slide(seq)
        if lanes is not None:
            lanes.advanced()
        failed = self._score_prompts(step.scored, logits, len(step.sampled), out)
        if step.sampled:
            self._sample(step.sampled, logits, failed, out)

    def _sample(self, rows: list[Sequence], logits: torch.Tensor, failed: set[Sequence],
                out: list[tuple[Sequence, Delta | BaseException]]) -> None:
        """The step's sampled rows (their logits first): each sequence's next token, or its
        end (llm/outcome.py); an ended one leaves the scheduler."""
        states = [s.sample_state for s in rows]
        sampled = sample(logits[:len(rows)], states)  # type: ignore[arg-type]
        self.sampled_tokens += len(rows)
        now = time.monotonic()
        for i, seq in enumerate(rows):
            error = sampled.failed.get(i)
            if seq in failed:
                continue
            item: Delta | BaseException
            if error is not None:
                item = fail_sequence(seq, error)
            elif seq.params.max_tokens == 0:  # the prompt alone was asked for (its logprobs)
                item = prompt_only(seq, now)
            else:
                item = advance(seq, sampled.tokens[i], sampled.infos[i], now, self.lm.eos_ids,
                               self.cfg.max_model_len)
            if isinstance(item, BaseException) or item.finish_reason is not None:
                self.scheduler.remove(seq)  # its blocks are free for the next step
            out.append((seq, item))

    def _score_prompts(self, scored: list[tuple[Sequence, int, int]], logits: torch.Tensor,
                       row: int, out: list[tuple[Sequence, Delta | BaseException]]
                       ) -> set[Sequence]:
        """The prompt logprobs of the step's scored positions (their logits from ``row``
        on); the sequences whose scoring failed (each ends with its error, the others go on)."""
        failed: set[Sequence] = set()
        for seq, first, count in scored:
            assert seq.prompt_logprobs is not None and len(seq.prompt_logprobs) == first
            try:
                seq.prompt_logprobs.extend(score(logits[row:row + count],
                                                 seq.prompt[first + 1:first + 1 + count],
                                                 seq.params.prompt_logprobs or 0))
            except Exception as exc:
                out.append((seq, self._fail(seq, exc)))
                failed.add(seq)
            row += count
        return failed

    def _fail(self, seq: Sequence, error: Exception) -> Exception:
        self.scheduler.remove(seq)
        return fail_sequence(seq, error)

    def warm(self) -> None:
        """Before serving, in the calling thread: a short generation that a second prompt
        joins after its first step, so the steps a traced graph replays (decodes alone,
        decodes and a prompt) are traced now rather than at the first requests."""
        params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
        self.scheduler.add(self.sequence([0] * 4, params))
        self.step()
        self.scheduler.add(self.sequence([1] * 4, params))
        while self._has_work():
            self.step()
        # the prefill pacer fits the served steps' cost: not the traces' (tens of ms each)
        self.pacer.steps.clear()

    # ---- in-process use (benchmarks, tests) ------------------------------------------------
    def generate_sync(self, prompts: list[list[int]], params: SamplingParams,
                      loras: list[int] | None = None) -> list[list[int]]:
        """Run prompts to completion in the calling thread (the engine thread must not run);
        ``loras``: each prompt's adapter id (bench/llm/lora.py)."""
        outs: dict[int, list[int]] = {}
        seqs = []
        for i, p in enumerate(prompts):
            seq = self.sequence(p, params)
            seq.lora = loras[i] if loras else 0
            seq.cache_root = cache_root(None, seq.lora)
            outs[seq.rid] = seq.output
            seqs.append(seq)
            self.scheduler.add(seq)
        while self._has_work():
            self.step()
        return [outs[s.rid] for s in seqs]

