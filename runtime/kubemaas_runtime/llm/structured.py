"""Structured outputs: sampling held to a grammar, through llguidance (one of vLLM's backends).

A request's constraint (a JSON schema, any JSON object, a regex, one of a list of strings, a
Lark or GBNF grammar, or structural tags: JSON held to a schema between a begin and an end
wherever free text names a trigger) becomes an llguidance grammar; each of its sequences gets a
matcher that says, before every token, which tokens may come next (the others' logits are set
to the lowest finite value, as ``min_tokens`` does, so that greedy, sampling and logprobs all
see the same masked row) and consumes the token drawn. A sequence whose grammar is complete
stops there (``finish_reason`` ``stop``), as vLLM's does; one that runs out of tokens first
ends ``length`` with an incomplete text.

JSON is generated compact, with OpenAI's separators (``", "``, ``": "``) and no other
whitespace: with whitespace left free a weak model can emit it until ``max_tokens``.
A mask is computed on the engine thread every step, so its cost is every stream's: llguidance
bounds a grammar's size and most of its work, but not all (a nested counted repetition such
as ``(a{1000}){1000}`` costs ~0.5 s for its first mask and ~50 ms for the next ones on this
project's 2-core test machine, where its lexer then gives up after one token: "too many
expressions constructed"). A grammar is therefore tried in a worker thread
before it is accepted: one whose mask at the start costs more than ``ACCEPT_MASK_S`` is
refused (400); and in the engine, a sequence whose mask took more than ``FAIL_MASK_S`` fails
alone.

A reasoning model's grammar holds its answer, not its thinking (``AfterThinking``): vLLM's
rule, with the block told apart by its ``<think>`` and ``</think>`` tokens; the same gate
closes the block after a request's ``thinking_token_budget``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

JSON_OPTIONS: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_CACHED_GRAMMARS = 64  # validated grammars kept per server
# a grammar whose mask at its start costs more is refused: far above a usual grammar's (a
# small JSON schema's mask took 4 us with the test models' 1,024-token vocabulary), and under
# that regex's ~50 ms with room for a faster CPU
ACCEPT_MASK_S = 0.02
FAIL_MASK_S = 0.25  # a sequence whose mask took longer fails (a step stalls every stream)


@dataclass(frozen=True)
class Constraint:
    """What a request's output must match: ``kind`` json | regex | choice | grammar |
    structural_tag, and its source text (a JSON schema, a regex, a JSON list of strings, a Lark
    or GBNF grammar, a JSON {"structures", "triggers"})."""

    kind: str
    source: str
    param: str  # the request field it came from (for errors)


def grammar_text(constraint: Constraint, special: frozenset[str] = frozenset()) -> str:
    """The llguidance grammar of a constraint (not yet checked against the tokenizer);
    ``special``: the tokenizer's special tokens (a structural tag's trigger may be one)."""
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import any_to_lark

    if constraint.kind == "structural_tag":
        return structural_tag_grammar(json.loads(constraint.source), special)
    if constraint.kind == "json":
        return str(LLMatcher.grammar_from_json_schema(constraint.source, overrides=JSON_OPTIONS))
    if constraint.kind == "regex":
        return str(LLMatcher.grammar_from_regex(constraint.source))
    if constraint.kind == "choice":
        options = json.loads(constraint.source)
        return str(LLMatcher.grammar_from_regex("|".join(f"({re.escape(o)})" for o in options)))
    return str(LLMatcher.grammar_from_lark(any_to_lark(constraint.source)))


def structural_tag_grammar(tag: dict[str, Any], special: frozenset[str]) -> str:
    """vLLM's structural tags as llguidance builds them: free text, in which a trigger starts a
    structure's begin, its JSON (compact, as every JSON output here) and its end. A trigger
    written ``<...>`` is matched as the special token when the tokenizer has it as one (the
    model emits it as a token, not as text), else as text; one request cannot have both."""
    from llguidance import StructTag

    triggers: list[str] = tag["triggers"]
    bracketed = {t for t in triggers if t.startswith("<") and t.endswith(">")}
    if bracketed & special and bracketed - special:
        raise ValueError(f"the triggers {sorted(bracketed & special)} are special tokens of "
                         f"this model and {sorted(bracketed - special)} are not; give "
                         "triggers of one kind")
    tags = [StructTag(trigger=next(t for t in triggers if s["begin"].startswith(t)),
                      begin=s["begin"], grammar={**s["schema"], "x-guidance": JSON_OPTIONS},
                      end=s["end"]) for s in tag["structures"]]
    return str(StructTag.to_grammar(tags, assume_special=bool(bracketed & special)))


def special_tokens(tokenizer: Any) -> frozenset[str]:
    """The tokenizer's special tokens (llguidance tells them apart from text)."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return frozenset(t.content for t in added.values() if getattr(t, "special", False)) | \
        frozenset(getattr(tokenizer, "all_special_tokens", ()))


class InvalidConstraint(ValueError):
    """The constraint does not compile (the caller answers 400 with the message)."""


class Grammars:
    """One per served model: llguidance's view of the tokenizer (made on first use: it reads
    the whole vocabulary) and the grammars validated lately. Thread-safe; call it off the
    event loop (a complex grammar takes a while to compile)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: frozenset[int]) -> None:
        self._hf_tokenizer = tokenizer
        self._special = special_tokens(tokenizer)  # (structural tags' triggers may be these)
        self._vocab_size = vocab_size
        self._eos = sorted(eos_ids)
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._valid: OrderedDict[Constraint, str] = OrderedDict()

    def _llg_tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=self._vocab_size,
                    eos_token=self._eos or None)
            return self._tokenizer

    def matchers(self, constraint: Constraint, count: int) -> list[Any]:
        """``count`` fresh matchers of the constraint (one per sequence)."""
        from llguidance import LLMatcher

        tokenizer = self._llg_tokenizer()
        grammar = self._validated(constraint, tokenizer)
        first = LLMatcher(tokenizer, grammar, log_level=0)
        if first.is_error():
            raise InvalidConstraint(first.get_error())
        first.compute_bitmask()  # the first mask builds the lexer: here, not in the engine
        started = time.perf_counter()
        mask = first.compute_bitmask()
        cost = time.perf_counter() - started
        if cost > ACCEPT_MASK_S:
            raise InvalidConstraint(f"following it costs {cost * 1000:.0f} ms a token, over "
                                    f"the limit of {ACCEPT_MASK_S * 1000:.0f} ms; simplify it")
        if not first.is_accepting() and _ends_only(mask, self._eos, self._vocab_size):
            # llguidance then lets EOS end it at once: an empty answer, finish_reason "stop"
            raise InvalidConstraint("it admits no output: nothing may start it (a schema "
                                    "whose only definition is a reference to itself, for "
                                    "example)")
        copies = [first.deep_copy() for _ in range(count - 1)]
        for copy in copies:
            copy.compute_bitmask()
        return [first, *copies]

    def _validated(self, constraint: Constraint, tokenizer: Any) -> str:
        from llguidance import LLMatcher

        with self._lock:
            if constraint in self._valid:
                self._valid.move_to_end(constraint)
                return self._valid[constraint]
        try:
            grammar = grammar_text(constraint, self._special)
        except Exception as exc:  # a schema that is not a JSON object, a GBNF that won't parse
            raise InvalidConstraint(str(exc)) from None
        error = LLMatcher.validate_grammar(grammar, tokenizer)
        if error:
            raise InvalidConstraint(error)
        if constraint.kind == "structural_tag":
            self._check_structures(json.loads(constraint.source)["structures"], tokenizer)
        with self._lock:
            self._valid[constraint] = grammar
            while len(self._valid) > _CACHED_GRAMMARS:
                self._valid.popitem(last=False)
        return grammar


    def _check_structures(self, structures: list[dict[str, Any]], tokenizer: Any) -> None:
        """A structure whose schema admits no output (only a reference to itself) compiles,
        but fails mid-answer once the model writes its trigger, after the free text before
        it was sent: refused here. Only schemas with references are checked (a mask each)."""
        from llguidance import LLMatcher

        seen: set[str] = set()
        for i, structure in enumerate(structures):
            schema = json.dumps(structure["schema"], sort_keys=True)
            if '"$ref"' not in schema or schema in seen:
                continue
            seen.add(schema)
            matcher = LLMatcher(tokenizer, LLMatcher.grammar_from_json_schema(
                schema, overrides=JSON_OPTIONS), log_level=0)
            if matcher.is_error():
                raise InvalidConstraint(f"structures[{i}]: {matcher.get_error()}")
            if not matcher.is_accepting() and _ends_only(
                    matcher.compute_bitmask(), self._eos, self._vocab_size):
                raise InvalidConstraint(f"structures[{i}]'s schema admits no output: nothing "
                                        "may start it (a schema whose only definition is a "
                                        "reference to itself, for example)")


class AfterThinking:
    """A reasoning model's grammar, held from the end of its ``<think>`` block, as vLLM holds
    it (the model may reason freely first, then answer in the required form), and vLLM's
    ``thinking_token_budget``: past that many thinking tokens, ``</think>`` is the only token
    allowed. A block opened by the prompt (DeepSeek-R1's template) runs until ``</think>``;
    otherwise the first token may open one (``<think>`` is allowed beside what the grammar
    allows) or start the answer. Used like the matcher it wraps (``matcher`` None: no grammar,
    a budget only): ``compute_bitmask`` gives None while the output is free,
    ``consume_token`` passes the thinking by."""

    def __init__(self, matcher: Any, think: int, end_think: int, opened: bool,
                 budget: int | None = None) -> None:
        self.matcher = matcher
        self.think, self.end_think = think, end_think
        self.state = "thinking" if opened else "first"  # first | thinking | answer
        self.budget = budget
        self.spent = 0  # thinking tokens so far

    def compute_bitmask(self) -> bytes | None:
        if self.state == "thinking":
            if self.budget is not None and self.spent >= self.budget:
                return _only(self.end_think)
            return None
        if self.matcher is None:
            return None
        raw = self.matcher.compute_bitmask()
        if self.state == "answer":
            return raw  # type: ignore[no-any-return]
        mask = bytearray(raw)
        mask[self.think // 8] |= 1 << (self.think % 8)
        return bytes(mask)

    def consume_token(self, token: int) -> bool:
        if self.state == "first":
            self.state = "thinking" if token == self.think else "answer"
        elif self.state == "thinking":
            if token == self.end_think:
                self.state = "answer"
            else:
                self.spent += 1
            return True
        return self.state == "thinking" or self.matcher is None or \
            bool(self.matcher.consume_token(token))

    def is_stopped(self) -> bool:
        return self.state == "answer" and self.matcher is not None and \
            bool(self.matcher.is_stopped())

    def get_error(self) -> str:
        return str(self.matcher.get_error()) if self.matcher is not None else ""

    def is_error(self) -> bool:
        return self.matcher is not None and bool(self.matcher.is_error())


def _ends_only(mask: bytes, eos: list[int], vocab: int) -> bool:
    """The packed mask allows no token but EOS."""
    bits = np.unpackbits(np.frombuffer(mask, dtype=np.uint8), bitorder="little", count=vocab)
    return set(np.flatnonzero(bits).tolist()) <= set(eos)


def _only(token: int) -> bytes:
    """A packed mask that allows one token (the bits past its end read as zeros)."""
    mask = bytearray(token // 8 + 1)
    mask[token // 8] = 1 << (token % 8)
    return bytes(mask)


def allowed_tokens(matcher: Any, vocab: int) -> torch.Tensor | None:
    """A bool mask over the vocabulary: the tokens the matcher's grammar allows next (EOS once
    the grammar may end), or None where it allows anything (a reasoning model thinking).
    Raises when computing it took longer than ``FAIL_MASK_S``."""
    started = time.perf_counter()
    raw = matcher.compute_bitmask()
    if raw is None:
        return None
    cost = time.perf_counter() - started
    if cost > FAIL_MASK_S:
        raise ValueError(f"the output grammar took {cost * 1000:.0f} ms for one token, over the "
                         f"limit of {FAIL_MASK_S * 1000:.0f} ms")
    # token 8b + j is bit j of byte b; past the mask's end, zeros (6x faster than torch ops)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little", count=vocab)
    return torch.from_numpy(bits.view(np.bool_))
