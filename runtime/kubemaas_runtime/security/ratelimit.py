"""Per-key rate limits: requests per second and (for language models) tokens per minute.

Both are token buckets. Requests are charged one each on admission. Tokens (prompt + completion)
are only known once the answer is done, so they are charged afterwards and may drive the bucket
below zero; a key in debt is refused until the bucket refills to zero. Concurrent requests of
one key can therefore overshoot a tokens-per-minute limit by what they are generating at that
moment, never for longer than the debt takes to pay back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` units per second, holding at most ``capacity``; starts full."""

    rate: float
    capacity: float
    level: float = field(default=-1.0)
    stamp: float = 0.0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        if self.level < 0:
            self.level = self.capacity

    def _fill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def try_take(self, amount: float, now: float) -> float:
        """Take ``amount`` if the bucket holds it: 0.0. Otherwise take nothing and return the
        seconds until it would."""
        self._fill(now)
        if self.level >= amount:
            self.level -= amount
            return 0.0
        return (amount - self.level) / self.rate

    def wait_positive(self, now: float) -> float:
        """0.0 when the bucket is not in debt, else the seconds until it is paid back."""
        self._fill(now)
        return 0.0 if self.level >= 0 else -self.level / self.rate

    def charge(self, amount: float, now: float) -> None:
        """Take ``amount`` whatever the level (it may go negative: debt)."""
        self._fill(now)
        self.level -= amount


@dataclass(frozen=True)
class Limits:
    requests_per_second: float = 0.0  # 0 = no limit
    burst: float = 0.0  # 0 = max(1, requests_per_second)
    tokens_per_minute: int = 0  # 0 = no limit

    @property
    def enabled(self) -> bool:
        return self.requests_per_second > 0 or self.tokens_per_minute > 0


@dataclass
class Refusal:
    limit: str  # "requests" or "tokens"
    retry_after_s: int


class RateLimiter:
    """The same limits for every key, one pair of buckets per key name."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}

    def admit(self, key: str, now: float) -> Refusal | None:
        lim = self.limits
        if lim.tokens_per_minute > 0:
            tb = self._tokens.get(key)
            if tb is not None:
                wait = tb.wait_positive(now)
                if wait > 0:
                    return Refusal("tokens", max(1, math.ceil(wait)))
        if lim.requests_per_second > 0:
            rb = self._requests.get(key)
            if rb is None:
                rb = self._requests[key] = TokenBucket(
                    lim.requests_per_second, lim.burst or max(1.0, lim.requests_per_second),
                    stamp=now)
            wait = rb.try_take(1.0, now)
            if wait > 0:
                return Refusal("requests", max(1, math.ceil(wait)))
        return None

    def charge_tokens(self, key: str, tokens: int, now: float) -> None:
        if self.limits.tokens_per_minute <= 0 or tokens <= 0:
            return
        tb = self._tokens.get(key)
        if tb is None:
            tpm = float(self.limits.tokens_per_minute)
            tb = self._tokens[key] = TokenBucket(tpm / 60.0, tpm, stamp=now)
        tb.charge(tokens, now)
