"""vLLM's beam search on the completions and chat endpoints: ``use_beam_search: true``, ``n``
the beam width (and the number of answers, best first), ``length_penalty``, ``max_tokens``,
``ignore_eos``, ``stop_token_ids`` and ``include_stop_str_in_output`` (llm/beam.py runs it).

The search is deterministic: temperature, top_p, top_k, min_p and seed are accepted and change
nothing, as in vLLM. What it does not apply is refused rather than ignored: stop strings,
logprobs, structured outputs and the tool choices that hold to one, penalties, logit_bias,
allowed_token_ids, bad_words, min_tokens, the thinking budget.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .openai_errors import bad_request as _bad

if TYPE_CHECKING:
    from .openai_schema import GenerationRequest


@dataclass(frozen=True)
class BeamOptions:
    length_penalty: float = 1.0  # the score: cumulative logprob / length ** length_penalty


def _not_applied(req: GenerationRequest) -> list[tuple[str, bool]]:
    params = req.params
    constraint = req.constraint.param if req.constraint is not None else "response_format"
    return [("stop", bool(params.stop)), ("logprobs", req.logprobs),
            ("prompt_logprobs", req.prompt_logprobs), (constraint, req.constraint is not None),
            ("presence_penalty", params.presence_penalty != 0.0),
            ("frequency_penalty", params.frequency_penalty != 0.0),
            ("repetition_penalty", params.repetition_penalty != 1.0),
            ("logit_bias", bool(params.logit_bias)),
            ("allowed_token_ids", bool(params.allowed_token_ids)),
            ("bad_words", bool(req.bad_words)), ("min_tokens", params.min_tokens > 0),
            ("thinking_token_budget", req.thinking_token_budget is not None)]


def parse_beam(doc: dict[str, Any], req: GenerationRequest) -> GenerationRequest:
    """The request with its beam search, if it asks for one."""
    use = doc.get("use_beam_search")
    if use is not None and not isinstance(use, bool):
        raise _bad("'use_beam_search' must be a boolean", "use_beam_search")
    penalty = doc.get("length_penalty")
    if penalty is not None and (isinstance(penalty, bool) or
                                not isinstance(penalty, (int, float)) or
                                not -100 <= penalty <= 100):
        raise _bad("'length_penalty' must be a number in -100..100", "length_penalty")
    if not use:
        if penalty not in (None, 1, 1.0):
            raise _bad("'length_penalty' applies to beam search only (use_beam_search: true)",
                       "length_penalty")
        return req
    for key, asked in _not_applied(req):
        if asked:
            raise _bad(f"'{key}' is not applied by beam search (use_beam_search): leave it "
                       "out", key)
    return replace(req, beam=BeamOptions(1.0 if penalty is None else float(penalty)))
