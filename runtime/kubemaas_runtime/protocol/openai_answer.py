"""The documents of an OpenAI answer that streamed and non-streamed answers share: a choice,
its logprobs (with ``echo``, the prompt's before the output's), vLLM's ``prompt_logprobs``, and
the usage of all choices.

A completions request may carry several prompts and ``n`` choices each: choice ``i * n + j`` is
prompt i's j-th, as OpenAI and vLLM number them. A prompt's tokens are counted once, with its
first choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..llm.request_stream import Delta, RequestStream
from ..llm.sampling import TokenLogprobs
from .openai_schema import GenerationRequest


@dataclass
class Choice:
    """One engine sequence of a request and where its answer goes."""

    index: int
    stream: RequestStream
    prompt: list[int]
    first: bool  # its prompt's first choice: the prompt's usage and metrics count with it
    echo_text: str = ""  # with echo: the prompt's text, which the choice's text starts with
    # the output lengths of its prompt's finished choices (one list, shared by its n choices)
    lengths: list[int] = field(default_factory=list)
    # what the metrics counted of it so far: its output tokens, and (first choice) its prompt
    counted: int = 0
    prompt_counted: bool = False


def token_text(tokenizer: Any, token: int) -> str:
    return str(tokenizer.decode([token]))


def logprobs_doc(tokenizer: Any, chat: bool, lps: list[TokenLogprobs], offset: int,
                 unscored: int | None = None, as_ids: bool = False) -> dict[str, Any]:
    """OpenAI's logprobs object: chat's ``content`` list, or completions' parallel lists
    (``text_offset`` counted from ``offset`` characters of the answer; ``unscored``: an
    echoed prompt's first token, which has no logprob and leads the lists with nulls).
    ``as_ids``: each token is named ``token_id:N`` instead of its text, as vLLM's
    ``return_tokens_as_token_ids`` does (``text_offset`` still counts the text's characters,
    where vLLM's would count those of the names)."""
    def text(token: int) -> str:
        return f"token_id:{token}" if as_ids else token_text(tokenizer, token)

    if chat:
        return {"content": [{
            "token": text(lp.token), "logprob": lp.logprob,
            "bytes": list(text(lp.token).encode()),
            "top_logprobs": [{"token": text(t), "logprob": v,
                              "bytes": list(text(t).encode())} for t, v in lp.top],
        } for lp in lps]}
    ids = ([] if unscored is None else [unscored]) + [lp.token for lp in lps]
    texts = [token_text(tokenizer, token) for token in ids]
    offsets, pos = [], offset
    for piece in texts:  # into the answer's text, whatever names the tokens
        offsets.append(pos)
        pos += len(piece)
    tokens = [f"token_id:{token}" for token in ids] if as_ids else texts
    lead: list[None] = [] if unscored is None else [None]
    return {"tokens": tokens,
            "token_logprobs": lead + [lp.logprob for lp in lps],
            # the drawn token, then the most likely: up to logprobs + 1 entries, as OpenAI's
            # and vLLM's completions give them
            "top_logprobs": lead + [{text(lp.token): lp.logprob,
                                     **{text(t): v for t, v in lp.top}} for lp in lps],
            "text_offset": offsets}


def prompt_logprobs_doc(tokenizer: Any, lps: tuple[TokenLogprobs, ...] | None
                        ) -> list[dict[str, Any] | None] | None:
    """vLLM's ``prompt_logprobs``: null for the first prompt token, then for each token a map
    from token id to its logprob, rank and text, for the prompt's token and the most likely."""
    if lps is None:
        return None

    def entry(token: int, logprob: float, rank: int | None) -> dict[str, Any]:
        return {"logprob": logprob, "rank": rank,
                "decoded_token": token_text(tokenizer, token)}

    out: list[dict[str, Any] | None] = [None]
    for lp in lps:
        doc = {str(t): entry(t, v, r) for r, (t, v) in enumerate(lp.top, 1)}
        doc[str(lp.token)] = entry(lp.token, lp.logprob, lp.rank)
        out.append(doc)
    return out


def usage_doc(lasts: list[Delta], n: int) -> dict[str, Any]:
    """OpenAI's usage object from the last delta of each choice (``n`` per prompt, in order):
    each prompt counted once, the tokens of every choice (``cached_tokens``: the prompt tokens
    the prefix cache held for each prompt's first choice)."""
    firsts = lasts[::n]
    prompt = sum(d.prompt_tokens for d in firsts)
    completion = sum(d.completion_tokens for d in lasts)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(d.cached_tokens for d in firsts)}}


def choice_doc(tokenizer: Any, req: GenerationRequest, choice: Choice, deltas: list[Delta]
               ) -> dict[str, Any]:
    """A finished choice of a non-streamed answer, from all of its deltas."""
    last, first = deltas[-1], deltas[0]
    text = "".join(d.text for d in deltas)
    lps = [lp for d in deltas for lp in d.logprobs]
    logprobs = None
    if req.logprobs and req.echo and not req.chat:
        logprobs = logprobs_doc(tokenizer, False, list(first.prompt_logprobs or ()) + lps, 0,
                                unscored=choice.prompt[0], as_ids=req.tokens_as_ids)
    elif req.logprobs:
        logprobs = logprobs_doc(tokenizer, req.chat, lps, 0, as_ids=req.tokens_as_ids)
    # vLLM's stop_reason: the stop token id or stop string that ended the choice
    if req.chat:
        doc = {"index": choice.index, "message": {"role": "assistant", "content": text},
               "logprobs": logprobs, "finish_reason": last.finish_reason,
               "stop_reason": last.stop_reason}
    else:
        doc = {"index": choice.index, "text": choice.echo_text + text, "logprobs": logprobs,
               "finish_reason": last.finish_reason, "stop_reason": last.stop_reason}
    if req.prompt_logprobs and not req.chat:  # a chat answer has them once, at the top
        doc["prompt_logprobs"] = prompt_logprobs_doc(tokenizer, first.prompt_logprobs)
    if req.return_token_ids:
        if not req.chat:  # a chat answer has them once, at the top
            doc["prompt_token_ids"] = choice.prompt
        doc["token_ids"] = list(choice.stream.seq.output)
    return doc
