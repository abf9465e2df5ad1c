"""How the local control plane holds up: start-up time and 1,000 fake GPU nodes.

    .venv/bin/python bench/testbed_scale.py [--nodes 1000] [--starts 3]

Prints, for a private testbed in a temporary directory:
  * start-up with cached binaries (`up` until every default node is Ready), N times;
  * the time from creating N extra 8-GPU nodes until all are Ready;
  * the resident memory (current and peak) of each control-plane process.
This is the floor the operator's scale benchmarks stand on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from kubemaas_testbed import topology
from kubemaas_testbed.cluster import Cluster


def rss_mib(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def ready_count(cluster: Cluster, prefix: str) -> int:
    nodes = cluster.get("/api/v1/nodes")["items"]
    return sum(1 for n in nodes if n["metadata"]["name"].startswith(prefix)
               and any(c["type"] == "Ready" and c["status"] == "True"
                       for c in n.get("status", {}).get("conditions", [])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()

    starts = []
    for _ in range(args.starts):
        with tempfile.TemporaryDirectory() as tmp:
            cluster = Cluster(Path(tmp) / "testbed")
            began = time.monotonic()
            cluster.up(log=lambda _msg: None)
            starts.append(time.monotonic() - began)
            cluster.down()
    print(f"start-up to all default nodes Ready (cached binaries), {args.starts} runs: "
          f"median {statistics.median(starts):.1f} s, min {min(starts):.1f} s, "
          f"max {max(starts):.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp) / "testbed")
        cluster.up(log=lambda _msg: None)
        try:
            group = {"name": "scale-h100", "count": args.nodes, "cpu": "208", "memory": "2Ti",
                     "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "memoryMiB": 81559, "count": 8}}
            manifests = topology.node_manifests([group])
            began = time.monotonic()
            cluster.create_nodes(manifests, workers=32)
            created = time.monotonic() - began
            while ready_count(cluster, "scale-h100-") < args.nodes:
                if time.monotonic() - began > 600:
                    raise SystemExit("gave up after 600 s")
                time.sleep(0.5)
            all_ready = time.monotonic() - began
            print(f"{args.nodes} nodes: created in {created:.1f} s, all Ready after "
                  f"{all_ready:.1f} s")
            memory = {p.name: rss_mib(p.pid) for p in cluster.processes.running()}
            print("process                   RSS MiB   peak MiB")
            for name, (rss, peak) in sorted(memory.items()):
                print(f"{name:<24} {rss:8.0f} {peak:10.0f}")
            print(json.dumps({"nodes": args.nodes, "starts_s": starts,
                              "create_s": created, "all_ready_s": all_ready,
                              "rss_mib": memory}))
        finally:
            cluster.down()


if __name__ == "__main__":
    main()
