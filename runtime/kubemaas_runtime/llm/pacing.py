"""How many prompt tokens a step may read beside running decodes.

Every running stream waits for the whole step between two of its tokens, so a step that also
reads a 500-token prompt chunk stretches every stream's inter-token gap to many decode steps
(inter-token p99 several times p50). The pacer keeps a mixed step (decodes and a prefill chunk)
within ``1 + share`` times a pure decode step: it keeps a moving average of the steps that only
decoded, and after each mixed step moves the cap down 20 % when that step was slower, up 10 %
when it was faster and the cap was what limited the chunk. A feedback loop rather than a cost
model, because a forward's fixed overhead dominates small chunks and differs by model, device and
batch. Steps without decodes are not capped: nobody waits on them but the prompt's own TTFT.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PrefillPacer:
    share: float        # a mixed step may take this fraction of a decode step more than one
    floor: int          # the cap never goes below this (one KV block: prompts always advance)
    ceiling: int        # nor above the step's token budget
    cap: int = 0
    decode_s: float = 0.0  # moving average of the pure decode steps' time

    def __post_init__(self) -> None:
        self.cap = self.ceiling

    def observe(self, step_s: float, decode_rows: int, prefill_tokens: int) -> int | None:
        """Record one step's forward time; return the cap for the next step (None: no cap)."""
        if self.share <= 0 or not decode_rows:
            return None if self.share <= 0 else self.cap
        if not prefill_tokens:
            self.decode_s = step_s if self.decode_s == 0 else 0.8 * self.decode_s + 0.2 * step_s
        elif self.decode_s > 0:
            if step_s > (1 + self.share) * self.decode_s:
                self.cap = max(self.floor, int(self.cap * 0.8))
            elif prefill_tokens >= self.cap:
                self.cap = min(self.ceiling, max(self.cap + 1, int(self.cap * 1.1)))
        return self.cap
