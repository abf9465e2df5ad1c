"""What a step makes of one sequence, on the engine thread: a sampled token (its text, and
whether it ends the sequence: EOS, a stop token or string, a complete grammar, max_tokens, the
model's length), a prompt-only request's end, or a failure. Each sets the sequence's
finish_reason when it ends; the engine takes an ended sequence out of the scheduler."""

from __future__ import annotations

import logging
from collections.abc import Collection

from .request_stream import Delta
from .sampling import NotANumber, TokenLogprobs, UnfollowableOutput
from .scheduler import Sequence

log = logging.getLogger("kubemaas.runtime.llm")


def advance(seq: Sequence, token: int, info: TokenLogprobs | None, now: float,
            eos_ids: Collection[int], max_model_len: int) -> Delta:
    """The sequence's next token: the Delta for its stream (finish_reason set when it ends)."""
    params = seq.params
    seq.first_token_at = seq.first_token_at or now
    seq.last_token_at = now
    reason: str | None = None
    stop_reason: int | str | None = None
    text = ""
    if (token in eos_ids and not params.ignore_eos) or token in params.stop_token_ids:
        reason = "stop"
        if token in params.stop_token_ids and token not in eos_ids:
            stop_reason = token
        seq.output.append(token)  # counted and returned (token_ids), never in the text
    else:
        seq.output.append(token)
        seq.ids.append(token)
        text, stopped = seq.detok.add(token, stops=len(seq.output) >= params.min_tokens)
        if stopped or _grammar_done(seq):
            reason, stop_reason = "stop", seq.detok.stopped_by
        elif len(seq.output) >= params.max_tokens or len(seq.ids) >= max_model_len:
            reason = "length"
    if reason is not None:
        text += seq.detok.flush()
        seq.finish_reason = reason
    return Delta(text, (token,), (info,) if info is not None else (), reason,
                 len(seq.prompt), len(seq.output), now, seq.cached_tokens or 0,
                 _prompt_logprobs(seq) if len(seq.output) == 1 else None,
                 seq.scheduled_at if reason is not None else None, stop_reason)


def prompt_only(seq: Sequence, now: float) -> Delta:
    """A request for the prompt alone (max_tokens 0, its prompt logprobs): it ends here."""
    seq.finish_reason = "length"
    return Delta("", (), (), "length", len(seq.prompt), 0, now, seq.cached_tokens or 0,
                 _prompt_logprobs(seq), seq.scheduled_at)


def fail_sequence(seq: Sequence, error: Exception) -> Exception:
    """One sequence whose sampling failed: it ends with the error, the others go on (a
    request whose own limits left it no token is the client's doing: no traceback)."""
    if isinstance(error, UnfollowableOutput):
        log.info("a request's limits left it no token: %s", error)
    elif isinstance(error, NotANumber):
        log.error("sampling failed for one request: %s", error)
    else:
        log.error("sampling failed for one request", exc_info=error)
    seq.finish_reason = "error"
    return error


def _grammar_done(seq: Sequence) -> bool:
    """A structured output whose grammar is complete: nothing more may follow."""
    matcher = seq.sample_state.matcher if seq.sample_state is not None else None
    return matcher is not None and bool(matcher.is_stopped())


def _prompt_logprobs(seq: Sequence) -> tuple[TokenLogprobs, ...] | None:
    return None if seq.prompt_logprobs is None else tuple(seq.prompt_logprobs)
