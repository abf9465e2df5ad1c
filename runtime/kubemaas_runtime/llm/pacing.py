"""How many prompt tokens a step may read beside running decodes.

Every running stream waits for the whole step between two of its tokens, so a step that also
reads a 500-token prompt chunk stretches every stream's inter-token gap to many decode steps
(inter-token p99 several times p50). The pacer keeps a step's prefill part within ``share`` of
a decode step's time: after each step that had both, it compares the prefill forward's time with
``share`` x the decode forward's (a moving average) and moves the cap down 20 % when over, up
10 % when under and the cap was what limited the chunk. A feedback loop rather than a cost
model, because a forward's fixed overhead dominates small chunks and differs by model, device and
batch. Steps without decodes are not capped: nobody waits on them but the prompt's own TTFT.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PrefillPacer:
    share: float        # a step's prefill time may be this fraction of a decode step's
    floor: int          # the cap never goes below this (one KV block: prompts always advance)
    ceiling: int        # nor above the step's token budget
    cap: int = 0
    decode_s: float = 0.0  # moving average of the decode forward's time

    def __post_init__(self) -> None:
        self.cap = self.ceiling

    def observe(self, decode_s: float | None, prefill_s: float | None, prefill_tokens: int
                ) -> int | None:
        """Record one step's forward times; return the cap for the next step (None: no cap)."""
        if self.share <= 0:
            return None
        if decode_s is not None:
            self.decode_s = decode_s if self.decode_s == 0 else 0.8 * self.decode_s + 0.2 * decode_s
        if decode_s is not None and prefill_s is not None:
            if prefill_s > self.share * self.decode_s:
                self.cap = max(self.floor, int(self.cap * 0.8))
            elif prefill_tokens >= self.cap:
                self.cap = min(self.ceiling, max(self.cap + 1, int(self.cap * 1.1)))
        return self.cap
