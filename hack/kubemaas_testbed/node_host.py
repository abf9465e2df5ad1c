"""What the real node (node.py) does to the host outside its own directory: commands, links,
mounts, network namespaces, the CNI plugins' iptables chains, cgroup trees and sysctls.

The functions keep no state of their own: RealNode decides when to call them, and records in
created.json what `down` must undo.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path

CNI_BIN = Path("/usr/lib/cni")
# Sysctls the kubelet sets on start when protectKernelDefaults is false (and refuses
# to start over, when it is true): recorded by `up`, put back by `down`.
KUBELET_SYSCTLS = ["vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
                   "kernel/keys/root_maxbytes"]


# Here, below node_slots.py and node.py, which raise it too; importers take it from node.py.
class NodeError(RuntimeError):
    """The real node could not be brought up (or down); the message says why."""


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise NodeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Mount points escape spaces as \040; ours have none.
        point = line.split()[4]
        if point.startswith(prefix):
            points.append(point)
    return points


def unmount(path: Path | str) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def unmount_under(directory: Path) -> None:
    """Unmount everything under directory, deepest first (repeat: mounts stack)."""
    for _ in range(5):
        points = mounts_under(directory)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            unmount(point)


def netns_of_sandboxes(containerd_dir: Path) -> set[str]:
    """Names of netns files referenced in our containerd's sandbox state."""
    names: set[str] = set()
    root = containerd_dir / "root"
    if not root.exists():
        return names
    # containerd records each sandbox's netns path in its metadata (bolt db): scan
    # the db's bytes for "/run/netns/cni-<uuid>" rather than parse bolt.
    db = root / "io.containerd.metadata.v1.bolt" / "meta.db"
    with contextlib.suppress(FileNotFoundError):
        data = db.read_bytes()
        start = 0
        while True:
            i = data.find(b"/netns/cni-", start)
            if i < 0:
                break
            name = data[i + len(b"/netns/"):i + len(b"/netns/") + 40].decode(errors="ignore")
            names.add(name[:40])
            start = i + 1
    return names


def cni_chains() -> list[str]:
    """iptables chains of the CNI plugins (CNI-*) in the nat table, as they are now."""
    result = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True)
    return sorted(line.split()[1] for line in result.stdout.splitlines()
                  if line.startswith("-N CNI-"))


def remove_cni_chains(keep: set[str]) -> None:
    """Remove the CNI-* nat chains that appeared while the node ran (portmap's)."""
    ours = [c for c in cni_chains() if c not in keep]
    if not ours:
        return
    rules = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True,
                           text=True).stdout.splitlines()
    for rule in rules:  # jumps into our chains from the built-in ones first
        parts = rule.split()
        if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1] in ours:
            subprocess.run(["iptables", "-t", "nat", "-D", *parts[1:]], capture_output=True)
    for chain in ours:
        subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True)
    for chain in ours:
        subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True)


def _hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, name=systemd, unified)."""
    return [h for h in Path("/sys/fs/cgroup").iterdir()
            if h.is_dir() and (h / "cgroup.procs").exists()]


def make_cgroup_root(root: str) -> None:
    """The kubelet's cgroupRoot must exist in every hierarchy before it starts."""
    for hierarchy in _hierarchies():
        directory = hierarchy / root.lstrip("/")
        directory.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":  # a new cpuset has no CPUs until given its parent's
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (directory / knob).write_text((hierarchy / knob).read_text())


def remove_cgroup_tree(root: str) -> None:
    """A kubelet's cgroup tree, deepest first, once its processes are gone."""
    for hierarchy in _hierarchies():
        top = hierarchy / root.lstrip("/")
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def read_sysctls() -> dict[str, str]:
    values = {}
    for key in KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            values[key] = Path(f"/proc/sys/{key}").read_text().strip()
    return values


def write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        with contextlib.suppress(OSError):
            current = Path(f"/proc/sys/{key}").read_text().strip()
            if current != value:
                Path(f"/proc/sys/{key}").write_text(value)
