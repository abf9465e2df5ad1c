"""Sequences about to decode, for the attention tests that build steps by hand."""

from __future__ import annotations

from collections.abc import Iterator

from kubemaas_runtime.llm.detok import Detokenizer
from kubemaas_runtime.llm.sampling import SamplingParams
from kubemaas_runtime.llm.scheduler import Sequence


def decoding(rid: int, context: int, blocks: Iterator[int], block_size: int) -> Sequence:
    """A sequence about to decode its token at position ``context - 1``, its blocks the next
    ones of ``blocks``."""
    s = Sequence(rid, [(rid * 7 + i) % 50 + 1 for i in range(context)],
                 SamplingParams(max_tokens=4), sink=lambda _: None, detok=Detokenizer(None))
    s.computed = context - 1
    s.blocks = [next(blocks) for _ in range(-(-context // block_size))]
    return s
