"""A claim or pod a policy of the cluster refused (a ResourceQuota, a LimitRange, an admission
policy, Pod Security): the cache waits, Pending with reason Refused, and asks again every
REFUSED_RETRY_S; at once only when its spec changes. Whatever else wakes the cache meanwhile
(any node's event, its own status written) keeps the refusal rather than asking again: each
wake used to ask, a refused write per node event (the policy changes by hand, not with them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..k8s import ApiError

REFUSED_RETRY_S = 30.0


def refusal_message(what: str, err: ApiError) -> str:
    return (f"the cluster's policy refused {what}: {err.message}; it is tried again every "
            f"{REFUSED_RETRY_S:.0f} s")[:2048]


def set_refused(status: dict[str, Any], message: str) -> None:
    """Pending (not Failed: the same spec is taken once the policy allows it)."""
    status.update(phase="Pending", reason="Refused", message=message)
    for condition in status.get("conditions") or []:
        condition.update(status="False", reason="Refused", message=message[:1024])


@dataclass(frozen=True)
class Refusal:
    generation: int
    at: float  # the clock's reading when refused
    message: str


class Refusals:
    """The last refusal per cache, until its retry is due or its spec changes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_key: dict[tuple[str, str], Refusal] = {}
        self._clock = clock

    def held(self, key: tuple[str, str], generation: int) -> tuple[str, float] | None:
        """The refusal's message and the seconds until it is asked again; None once due."""
        refusal = self._by_key.get(key)
        if refusal is None or refusal.generation != generation:
            return None
        left = refusal.at + REFUSED_RETRY_S - self._clock()
        return (refusal.message, left) if left > 0 else None

    def remember(self, key: tuple[str, str], generation: int, message: str) -> None:
        self._by_key[key] = Refusal(generation, self._clock(), message)

    def forget(self, key: tuple[str, str]) -> None:
        self._by_key.pop(key, None)
