"""What a generation's deltas count as they come: vLLM's metrics, the API key's token usage
(per-key token limits) and the request's log record."""

from __future__ import annotations

from collections.abc import Callable

from ..llm.request_stream import Delta
from ..metrics import LLMMetrics
from ..security.usage import current_usage
from .openai_answer import Choice
from .openai_request_id import current_trace


def observer(m: LLMMetrics, choice: Choice, n: int = 1) -> Callable[[Delta], None]:
    """The counting of one choice's deltas; the request's own (prompt tokens, end-to-end
    latency, success, its phases and sizes) are counted with its first choice (of ``n``), its
    longest answer when the last has finished."""
    stream, first = choice.stream, choice.first
    prev: list[float] = []
    first_at: list[float] = []
    usage = current_usage.get()  # per-key token limits (security/gate.py)
    trace = current_trace.get()  # the request's log record

    def observe(delta: Delta) -> None:
        count_tokens(m, choice, delta.prompt_tokens, delta.completion_tokens)
        if delta.token_ids and delta.finish_reason != "abort":
            if prev:
                m.itl.observe(m.label, delta.at - prev[0])
            else:
                m.ttft.observe(m.label, delta.at - stream.arrival)
                first_at.append(delta.at)
                if first and trace is not None:
                    trace.ttft_s = delta.at - stream.arrival
            prev[:] = [delta.at]
        if delta.finish_reason is None:
            return
        choice.lengths.append(delta.completion_tokens)
        if len(choice.lengths) == n:
            m.request_max_generation.observe(m.label, max(choice.lengths))
        prompt = delta.prompt_tokens if first else 0
        if usage is not None:
            usage.add(prompt + delta.completion_tokens)
        if trace is not None:
            trace.count_output(delta.completion_tokens)
            if first:
                trace.prompt_tokens, trace.finish_reason = prompt, delta.finish_reason
        if first:
            m.e2e.observe(m.label, delta.at - stream.arrival)
            m.success.inc((m.label[0], delta.finish_reason))
            m.observe_request(delta, first_at[0] if first_at else None, stream.arrival,
                              stream.seq.params.max_tokens, n)
    return observe


def count_tokens(m: LLMMetrics, choice: Choice, prompt: int, output: int) -> None:
    """vLLM's token counters as the choice runs: its prompt once prefilled (its first delta),
    its output tokens as they come (a rate() shows a long generation while it runs)."""
    if output > choice.counted:
        m.generation_tokens.inc(m.label, output - choice.counted)
        choice.counted = output
    if choice.first and not choice.prompt_counted:
        choice.prompt_counted = True
        m.prompt_tokens.inc(m.label, prompt)


def count_unfinished(m: LLMMetrics, choices: list[Choice]) -> None:
    """The tokens of the choices whose last delta never came (the client went away, a write
    failed, the drain cut them): what they generated stays counted, their prompt too once it
    ran."""
    for choice in choices:
        if choice.stream.finished:
            continue
        seq = choice.stream.seq
        if seq.output or seq.scheduled_at is not None:
            count_tokens(m, choice, len(seq.prompt), len(seq.output))


def charge_unfinished(choices: list[Choice]) -> None:
    """The choices whose last delta never came (the client went away, a write failed, the
    drain cut them) are charged to the API key what they generated so far: the finishing
    delta, which charges a choice, would otherwise leave them free."""
    usage = current_usage.get()
    if usage is None:
        return
    for choice in choices:
        if choice.stream.finished:
            continue
        seq = choice.stream.seq
        ran = bool(seq.output) or seq.scheduled_at is not None
        usage.add((len(seq.prompt) if choice.first and ran else 0) + len(seq.output))
