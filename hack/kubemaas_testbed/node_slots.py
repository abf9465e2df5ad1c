"""Slots: what each real node owns on this machine (node.py's RealNode claims one in `up`
and releases it in `down`).

Several testbeds on one machine may each have a real node (engineers' test sessions run side by
side): each takes a slot N, which gives it the bridge kubemaasN, the subnet 10.250.N.0/24 and the
cgroup root /kubemaas-nodeN. Slots are claimed under a lock in SLOTS_DIR (on /run: a reboot,
which removes bridges too, forgets them).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .node_host import NodeError, link_exists, remove_cgroup_tree, run

SUBNETS = ipaddress.ip_network("10.250.0.0/16")  # every real node's pods, never kwok's
MAX_SLOTS = 32
SLOTS_DIR = Path(os.environ.get("KUBEMAAS_NODE_SLOTS", "/run/kubemaas/real-nodes"))


@dataclass(frozen=True)
class Slot:
    """What one real node owns on this machine."""

    index: int

    @property
    def bridge(self) -> str:
        return f"kubemaas{self.index}"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.250.{self.index}.0/24")

    @property
    def gateway(self) -> str:
        """The bridge's address on the host, and the node's InternalIP."""
        return str(self.subnet.network_address + 1)

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroup root: two kubelets under one /kubepods would each
        remove the other's pods' cgroups as orphans."""
        return f"/kubemaas-node{self.index}"


@contextlib.contextmanager
def _slots_locked() -> Iterator[None]:
    SLOTS_DIR.mkdir(parents=True, exist_ok=True)
    with (SLOTS_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _slot_owners() -> dict[int, Path]:
    owners = {}
    for entry in SLOTS_DIR.glob("*.json") if SLOTS_DIR.exists() else []:
        with contextlib.suppress(ValueError, OSError, KeyError):
            owners[int(entry.stem)] = Path(json.loads(entry.read_text())["state"])
    return owners


def claim(state: Path, log: Callable[[str], None], alive: Callable[[Path], bool],
          tear_down: Callable[[Path], None]) -> tuple[Slot, bool]:
    """A free slot for the testbed at `state` (reclaiming those of dead nodes), and
    whether no other real node is up on this machine. `alive(owner)` says whether the real
    node of the testbed at `owner` still has processes; `tear_down(owner)` takes one that is
    gone down without giving its slot back."""
    with _slots_locked():
        owners = _slot_owners()
        for index, owner in sorted(owners.items()):
            if owner != state and alive(owner):
                continue
            log(f"reclaiming slot {index} from a real node that is gone ({owner})")
            tear_down(owner)
            bridge = Slot(index).bridge
            if link_exists(bridge):
                run("ip", "link", "del", bridge)
            remove_cgroup_tree(Slot(index).cgroup_root)
            (SLOTS_DIR / f"{index}.json").unlink()
            del owners[index]
        alone = not owners
        for index in range(MAX_SLOTS):
            slot = Slot(index)
            if index in owners or link_exists(slot.bridge) or _address_in_use(slot.subnet):
                continue
            (SLOTS_DIR / f"{index}.json").write_text(json.dumps({"state": str(state)}))
            return slot, alone
    raise NodeError(f"no free slot for a real node: {len(owners)} are up on this machine")


def release(slot: Slot) -> bool:
    """Give the slot back; True if it was the last one in use on this machine."""
    with _slots_locked():
        with contextlib.suppress(FileNotFoundError):
            (SLOTS_DIR / f"{slot.index}.json").unlink()
        return not _slot_owners()


def _address_in_use(subnet: ipaddress.IPv4Network) -> bool:
    """Whether any interface of this machine has an address in `subnet`."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            address = ipaddress.IPv4Interface(parts[parts.index("inet") + 1])
            if address.network.overlaps(subnet):
                return True
    return False

