"""What a real-node test says when a pod it waits for never comes up.

"timed out waiting for pod X Ready" alone says nothing of why: a pod left Pending by a
node taint (the kubelet's disk or memory pressure), a container stuck creating, a probe
that never passes. `pods_and_node` gathers what the control plane knows at that moment —
each pod's phase, conditions and container states, the namespace's newest events, the
node's conditions and taints — and the free disk under the node's directory (its
containerd and kubelet roots), for `wait_for(..., explain=...)`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kubemaas_testbed.node import RealNode
from tests.conftest import Kube

EVENTS = 15


def pods_and_node(kube: Kube, namespace: str, node: RealNode) -> str:
    lines = [f"pods in {namespace}:"]
    pods = _items(kube, "-n", namespace, "get", "pods")
    lines += [f"  {line}" for pod in pods for line in describe_pod(pod)] or ["  (none)"]
    lines.append(f"newest events in {namespace}:")
    events = sorted(_items(kube, "-n", namespace, "get", "events"), key=_event_time)
    lines += [f"  {describe_event(e)}" for e in events[-EVENTS:]] or ["  (none)"]
    node_object = json.loads(kube.kubectl("get", "node", node.name, "-o", "json").stdout)
    lines.append(f"node {node.name}: {describe_node(node_object)}")
    lines.append(f"free disk under {node.dir}: {free_disk(node.dir)}")
    for pod in pods:
        name = pod["metadata"]["name"]
        logs = kube.kubectl("-n", namespace, "logs", name, "--all-containers", "--tail=20",
                            check=False)
        if logs.stdout.strip():
            lines.append(f"last log lines of {name}:\n{logs.stdout.rstrip()}")
    return "\n".join(lines)


def describe_pod(pod: dict[str, Any]) -> list[str]:
    status = pod.get("status", {})
    head = f"{pod['metadata']['name']}: {status.get('phase', '?')}"
    head += f" on {pod['spec'].get('nodeName') or '(unscheduled)'}"
    if status.get("reason") or status.get("message"):
        head += f" ({status.get('reason', '')}: {status.get('message', '')})"
    lines = [head]
    lines += [f"  {c['type']}={c['status']} {c.get('reason', '')} {c.get('message', '')}".rstrip()
              for c in status.get("conditions", []) if c.get("status") != "True"]
    for container in status.get("containerStatuses", []):
        ((state, detail),) = (container.get("state") or {"unknown": {}}).items()
        said = " ".join(str(detail[k]) for k in ("reason", "exitCode", "message") if k in detail)
        lines.append(f"  container {container['name']}: {state} {said}".rstrip()
                     + f", restarts {container.get('restartCount', 0)}")
    return lines


def describe_event(event: dict[str, Any]) -> str:
    involved = event.get("involvedObject", {})
    count = f" (x{event['count']})" if event.get("count", 1) > 1 else ""
    return (f"{_event_time(event)} {event.get('type', '')} {event.get('reason', '')} "
            f"{involved.get('kind', '')}/{involved.get('name', '')}{count}: "
            f"{event.get('message', '').strip()}")


def describe_node(node: dict[str, Any]) -> str:
    conditions = ", ".join(f"{c['type']}={c['status']}"
                           + (f" ({c.get('reason')})" if c.get("status") != _usual(c) else "")
                           for c in node.get("status", {}).get("conditions", []))
    taints = ", ".join(f"{t['key']}:{t['effect']}" for t in node.get("spec", {}).get("taints", []))
    return f"{conditions}; taints: {taints or 'none'}"


def free_disk(path: Path) -> str:
    usage = shutil.disk_usage(path if path.exists() else Path("/"))
    return f"{usage.free / 2**30:.1f} GiB of {usage.total / 2**30:.1f} GiB"


def _usual(condition: dict[str, Any]) -> str:
    """A node's healthy value of a condition: Ready is True, the pressures are False."""
    return "True" if condition["type"] == "Ready" else "False"


def _event_time(event: dict[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime")
               or event.get("metadata", {}).get("creationTimestamp") or "")


def _items(kube: Kube, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(kube.kubectl(*args, "-o", "json").stdout)["items"])
