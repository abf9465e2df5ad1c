"""Beam search (vLLM's ``use_beam_search``) over the engine's own requests.

As vLLM runs it: each step asks the engine for one greedy token of every live beam (its prompt
and the beam's tokens so far, with the ``2 x width`` most likely next tokens' logprobs); the
candidates that end (an EOS or stop token id) join the finished beams, the ``width`` best of
the rest by cumulative logprob go on. After ``max_tokens`` steps, or when no beam is left, the
finished and live beams are ranked by ``cumulative logprob / length ** length_penalty`` (the
length counts the prompt, as vLLM's does, and not the stop token) and the best ``width`` are
the answers. The steps' requests reuse the prompt's and the beams' cached blocks (prefix
caching), so a step reads only the tokens since the last full block.

Each answer arrives whole, as one delta, when the search ends (streamed, it comes in one
chunk, as vLLM's does). The search is deterministic: sampling settings do not change it.

Against the queue limit a search counts as its width (queue_room.py): it reserves that many
places when admitted (Overloaded at once when they are not free), its steps' requests go in
within them, and they are given back when it ends, fails or is cancelled.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from .engine import Engine
from .lora import AdapterError
from .request_stream import Delta, RequestStream
from .sampling import SamplingParams


@dataclass(frozen=True)
class Beam:
    tokens: tuple[int, ...]  # generated so far (not the stop token that ended it)
    logprob: float  # cumulative
    stop: int | None = None  # the EOS or stop token id that ended it


def beam_score(beam: Beam, prompt_len: int, length_penalty: float) -> float:
    return beam.logprob / math.pow(prompt_len + len(beam.tokens), length_penalty)


class BeamAnswer(RequestStream):
    """One of a search's answers, read by the endpoints like any request's stream."""

    def __init__(self, search: BeamSearch, engine: Engine, prompt: list[int],
                 params: SamplingParams) -> None:
        super().__init__(engine, engine.sequence(prompt, params))
        self._search = search

    def _stop_work(self) -> None:
        self._search.cancel()


class BeamSearch:
    """The search for one prompt; ``answers`` are its ``width`` streams, best first."""

    def __init__(self, engine: Engine, prompt: list[int], params: SamplingParams, width: int,
                 length_penalty: float = 1.0, cache_salt: str | None = None,
                 priority: int = 0, lora: int = 0) -> None:
        self.engine, self.prompt, self.params = engine, list(prompt), params
        self.width, self.length_penalty = width, length_penalty
        self.cache_salt, self.priority, self.lora = cache_salt, priority, lora
        self.stops = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else engine.lm.eos_ids)
        self.step_params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=2 * width,
                                          ignore_eos=True)
        self.answers = [BeamAnswer(self, engine, self.prompt, params) for _ in range(width)]
        self.scheduled_at: float | None = None
        loras = engine.loras if lora else None
        if lora and (loras is None or not loras.serves(lora)):
            raise AdapterError("the LoRA adapter was unloaded")
        self.room = engine.reserve(width)  # (Overloaded: nothing taken)
        if loras is not None:  # its steps are new requests: an unload must wait for it
            loras.pin(lora)
        self._task = asyncio.get_running_loop().create_task(self._run())
        # (a done callback runs even for a task cancelled unstarted)
        self._task.add_done_callback(lambda _: self.room.release())
        if loras is not None:
            self._task.add_done_callback(lambda _: loras.unpin(lora))

    def cancel(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        try:
            ranked = await self._search()
            if len(ranked) < self.width:  # only with a vocabulary under 2 x width
                raise RuntimeError(f"beam search found {len(ranked)} beams, fewer than n")
            deltas = [self._delta(answer, beam)
                      for answer, beam in zip(self.answers, ranked, strict=True)]
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the engine's failure goes to every answer
            for answer in self.answers:
                answer.put(exc)
            return
        for answer, delta in zip(self.answers, deltas, strict=True):
            answer.put(delta)

    async def _search(self) -> list[Beam]:
        beams, ended = [Beam((), 0.0)], []
        for _ in range(self.params.max_tokens):
            tops = await asyncio.gather(*(self._next_tokens(beam) for beam in beams))
            candidates: list[Beam] = []
            for beam, top in zip(beams, tops, strict=True):
                for token, logprob in top:
                    if token in self.stops:
                        ended.append(Beam(beam.tokens, beam.logprob + logprob, token))
                    else:
                        candidates.append(Beam((*beam.tokens, token), beam.logprob + logprob))
            beams = sorted(candidates, key=lambda b: b.logprob, reverse=True)[:self.width]
            if not beams:
                break
        return sorted(ended + beams, reverse=True, key=lambda b: beam_score(
            b, len(self.prompt), self.length_penalty))[:self.width]

    async def _next_tokens(self, beam: Beam) -> tuple[tuple[int, float], ...]:
        """The most likely next tokens after the beam, with their logprobs."""
        stream = self.engine.submit(self.prompt + list(beam.tokens), self.step_params,
                                    self.cache_salt, None, self.priority, self.lora,
                                    pinned=True, within=self.room)
        last: Delta | None = None
        try:
            async for delta in stream:
                last = delta
        finally:
            stream.cancel()  # when cancelled: its blocks are freed at once
        assert last is not None and last.logprobs, "a step's request ended without a token"
        if self.scheduled_at is None:
            self.scheduled_at = last.scheduled_at
        return last.logprobs[0].top

    def _delta(self, answer: BeamAnswer, beam: Beam) -> Delta:
        """The answer's one delta: its tokens, its text, why it ended."""
        ids = list(beam.tokens)
        if beam.stop is not None and self.params.include_stop_str_in_output:
            ids.append(beam.stop)
        answer.seq.output[:] = ids
        text = self.engine.lm.tokenizer.decode(
            list(beam.tokens), skip_special_tokens=self.params.skip_special_tokens)
        return Delta(
            text=str(text), token_ids=tuple(ids), logprobs=(),
            finish_reason="stop" if beam.stop is not None else "length",
            prompt_tokens=len(self.prompt), completion_tokens=len(ids), at=time.monotonic(),
            scheduled_at=self.scheduled_at,
            stop_reason=beam.stop if beam.stop in self.params.stop_token_ids else None)
