"""What the control plane says of the real node: Ready, and settled there.

The kubelet posts NotReady first. The node lifecycle controller may taint the node for
that (node.kubernetes.io/not-ready, NoExecute) a moment after the kubelet says Ready, from
a cache that lags, and lifts the taint only at its next pass (--node-monitor-period, 5 s by
default). A node is up for the tests once it has been Ready without such a taint for
longer than that pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# Taints the node lifecycle controller puts on a node whose Ready condition is not True.
LIFECYCLE_TAINT_KEYS = frozenset({"node.kubernetes.io/not-ready",
                                  "node.kubernetes.io/unreachable"})
# Longer than one pass of the node lifecycle controller.
SETTLE_S = 6.0


def is_ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in node.get("status", {}).get("conditions", []))


def lifecycle_taints(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in node.get("spec", {}).get("taints", [])
            if t.get("key") in LIFECYCLE_TAINT_KEYS]


class Settling:
    """Called with the node object (None when there is none) until it says True: Ready
    and free of lifecycle taints for `settle_s` on end."""

    def __init__(self, settle_s: float = SETTLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settle_s = settle_s
        self.clock = clock
        self.since: float | None = None

    def __call__(self, node: dict[str, Any] | None) -> bool:
        if node is None or not is_ready(node) or lifecycle_taints(node):
            self.since = None
            return False
        if self.since is None:
            self.since = self.clock()
        return self.clock() - self.since >= self.settle_s
