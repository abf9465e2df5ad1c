"""How long a model on the real node took from kubectl apply to its first correct answer, and
when each step of its pod's start happened: printed, and appended to TIMINGS (a JSON line per
measurement) for the docs' figures."""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from tests.conftest import Kube

TIMINGS = Path(__file__).resolve().parents[2] / ".state" / "real-node-timings.jsonl"


def timeline(kube: Kube, namespace: str, pod: dict[str, Any],
             applied_at: float) -> dict[str, float]:
    """When (seconds after apply) the pod was created, scheduled, started; when its runtime
    said ready. The API's timestamps have one-second resolution."""
    def since(stamp: str | None) -> float:
        if not stamp:
            return -1.0
        parsed = time.strptime(stamp.replace("Z", "UTC"), "%Y-%m-%dT%H:%M:%S%Z")
        return round(calendar.timegm(parsed) - applied_at, 1)

    status = pod.get("status", {})
    conditions = {c["type"]: c.get("lastTransitionTime") for c in status.get("conditions", [])}
    (container,) = status.get("containerStatuses") or [{}]
    steps = {
        "pod_created": since(pod["metadata"].get("creationTimestamp")),
        "scheduled": since(conditions.get("PodScheduled")),
        "container_started": since(container.get("state", {}).get("running", {})
                                   .get("startedAt")),
    }
    logs = kube.kubectl("-n", namespace, "logs", pod["metadata"]["name"], check=False).stdout
    for line in logs.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("msg") == "ready":
                steps["runtime_seconds_to_ready"] = float(record.get("seconds_to_ready", -1))
    return steps


def record_first_inference(kube: Kube, namespace: str, pod: dict[str, Any], elapsed: float,
                            applied_at: float) -> None:
    """Print and append to TIMINGS how long apply -> first correct inference took, and when
    each step of the pod's start happened."""
    steps = timeline(kube, namespace, pod, applied_at)
    print(f"\nkubectl apply -> first correct inference: {elapsed:.2f} s "
          f"(seconds after apply, to 1 s: {steps})")
    TIMINGS.parent.mkdir(exist_ok=True)
    with TIMINGS.open("a") as out:
        out.write(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "apply_to_first_inference_s": round(elapsed, 2),
                              "steps": steps, "load1": os.getloadavg()[0]}) + "\n")
