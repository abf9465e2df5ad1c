"""How many prompt tokens a step may read beside running decodes.

Every running stream waits for the whole step between two of its tokens, so a step that also
reads a 500-token prompt chunk stretches every stream's inter-token gap to many decode steps.
This bites hardest when requests arrive together (a burst, or a closed loop whose requests
finish in the same step): a dozen new prompts read in one step beside four running streams made
those streams wait ten decode steps for one token.

The pacer holds a mixed step (decodes and prompt chunks) to about ``1 + share`` times what the
same decodes alone take. It fits the engine's step time as ``a + b x tokens`` (least squares
over the last ``window`` steps, every step counted: the fixed cost ``a`` of a forward is what
makes small chunks cheap) and caps the prompt tokens of a step with ``d`` decode rows at
``share x (a + b x d) / b``. When more sequences have prompt tokens left than rows decode,
there is no cap: the prompts are then most of the requests in service (the first of a burst
started decoding a step before the others arrived), and holding them back to spare those few
streams one long gap cost throughput and broke the batch's step (its requests then finish, and
their successors arrive, at different steps) without helping the inter-token tail, a p99 over
every stream's gaps. On the small benchmark model at c=16: capped always 156-181 tok/s, with
this rule 178-180, unpaced 166-187 with an inter-token p99 of 1.1x or 8.7x its p50. A burst
that reaches an idle engine is read in one step before any of it decodes (the engine's arrival
window), so this rule now mostly meets the requests that arrive while others decode.

A late chunk of a long prompt also attends over the part already read: on the small benchmark
model on CPU the streams' gaps beside a 1,024-token prompt climbed from ~65 to ~88 ms as its
chunks moved down the prompt under a fit of tokens alone. So the fit has a second term, the
KV positions a step's rows attend over (``reads``: a decode row its context, a chunk of ``t``
tokens after ``p`` already read ``t x p + t (t + 1) / 2``, ``p`` counted from its window's
first block with a window on every layer): ``a + b x tokens + c x reads``, and
the cap is the chunk whose extra time ``b t + c (t p + t^2 / 2)`` fits in
``share x (a + b d + c x decode reads)``. The term is kept only when the window separates it
from the token count (the two not nearly collinear) and its fitted cost is positive; else the
fit is of tokens alone, as before.

Until two different step sizes were seen, it assumes no fixed cost (the cap is ``share x d``,
the cautious side). Steps without decodes are not capped: nobody waits on them but the prompts'
own first token.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

COLLINEAR = 0.98  # r^2 of reads against tokens above which the window cannot tell them apart


def chunk_reads(prefix: int, tokens: int) -> int:
    """KV positions ``tokens`` prompt rows after ``prefix`` already read attend over (causal)."""
    return tokens * prefix + tokens * (tokens + 1) // 2


@dataclass(frozen=True)
class StepCost:
    fixed: float      # seconds a step takes whatever it holds
    per_token: float  # seconds per row
    per_read: float   # seconds per KV position a row attends over (0: not told apart)


@dataclass
class PrefillPacer:
    share: float        # a mixed step may take this fraction of its decodes' time more
    floor: int          # the cap never goes below this (one KV block: prompts always advance)
    ceiling: int        # nor above the step's token budget
    window: int = 64
    steps: deque[tuple[int, int, float]] = field(default_factory=deque)  # (tokens, reads, s)

    def observe(self, step_s: float, tokens: int, reads: int = 0) -> None:
        """Record one step's forward time, its rows (decodes + prompt tokens) and the KV
        positions they attend over."""
        self.steps.append((tokens, reads, step_s))
        if len(self.steps) > self.window:
            self.steps.popleft()

    def fit(self) -> StepCost | None:
        """The step's cost from the window (least squares), or None before any step."""
        if not self.steps:
            return None
        n = len(self.steps)
        mx = sum(x for x, _, _ in self.steps) / n
        mr = sum(r for _, r, _ in self.steps) / n
        my = sum(y for _, _, y in self.steps) / n
        sxx = sum((x - mx) ** 2 for x, _, _ in self.steps)
        if sxx < 1e-9:  # one step size so far: all of it per token
            return StepCost(0.0, my / mx, 0.0)
        srr = sum((r - mr) ** 2 for _, r, _ in self.steps)
        sxr = sum((x - mx) * (r - mr) for x, r, _ in self.steps)
        sxy = sum((x - mx) * (y - my) for x, _, y in self.steps)
        sry = sum((r - mr) * (y - my) for _, r, y in self.steps)
        if srr > 0 and sxr * sxr < COLLINEAR * sxx * srr:
            det = sxx * srr - sxr * sxr
            b = (sxy * srr - sry * sxr) / det
            c = (sry * sxx - sxy * sxr) / det
            if b > 0 and c > 0:
                return StepCost(max(0.0, my - b * mx - c * mr), b, c)
        b = sxy / sxx
        if b <= 0:  # noise, or size does not matter: no per-token cost to guard against
            return StepCost(my, 0.0, 0.0)
        return StepCost(max(0.0, my - b * mx), b, 0.0)

    def cap(self, decode_rows: int, prompts: int = 1, decode_reads: int = 0,
            prefix: int = 0) -> int | None:
        """Prompt tokens a step with ``decode_rows`` decodes (attending over ``decode_reads``
        KV positions) may read while ``prompts`` sequences have prompt tokens left, the first
        of them ``prefix`` tokens into its prompt (None: no cap)."""
        if self.share <= 0 or not decode_rows or prompts > decode_rows:
            return None
        cost = self.fit()
        if cost is None:
            return max(self.floor, min(self.ceiling, int(self.share * decode_rows)))
        if cost.per_token == 0:
            return self.ceiling
        room = self.share * (cost.fixed + cost.per_token * decode_rows
                             + cost.per_read * decode_reads)
        if cost.per_read == 0:
            allowed = room / cost.per_token
        else:  # b t + c (t p + t (t + 1) / 2) = room, solved for t
            linear = cost.per_token + cost.per_read * (prefix + 0.5)
            allowed = (math.sqrt(linear * linear + 2 * cost.per_read * room) - linear) \
                / cost.per_read
        return max(self.floor, min(self.ceiling, int(allowed)))
