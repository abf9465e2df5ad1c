"""/proc readings for the benchmarks: a server's process tree, its CPU ticks and RSS, a core's
busy ticks, the load average and who else is using the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(root: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def tree_cpu_ticks(pids: list[int]) -> int:
    """utime+stime (+ reaped children's) of every process in the tree."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total


def tree_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            continue
    return total


def cpu_busy_ticks(cpu: int) -> tuple[int, int]:
    """(busy, total) ticks of one CPU from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                total = sum(v[:8])
                return total - v[3] - v[4], total
    return 0, 1


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def busy_processes(seconds: float = 2.0, top: int = 6) -> list[str]:
    """The processes that used the most CPU over ``seconds`` (who else is on the machine)."""
    def snapshot() -> dict[int, tuple[str, int]]:
        out = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2:].split()
                out[int(entry.name)] = (comm, int(fields[11]) + int(fields[12]))
        return out

    before = snapshot()
    time.sleep(seconds)
    after = snapshot()
    used = sorted(((t - before.get(pid, (c, t))[1], c, pid) for pid, (c, t) in after.items()),
                  reverse=True)[:top]
    return [f"{c}[{pid}] {100 * d / CLK_TCK / seconds:.0f}%" for d, c, pid in used if d > 0]


class RssSampler:
    """Peak RSS of a process tree, sampled every ``period`` seconds in a thread."""

    def __init__(self, root: int, period: float = 0.2) -> None:
        self.root, self.period, self.peak = root, period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pids = process_tree(self.root)
        n = 0
        while not self._stop.is_set():
            if n % 10 == 0:
                pids = process_tree(self.root)  # workers may come and go
            self.peak = max(self.peak, tree_rss(pids))
            n += 1
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_model() -> str:
    """The CPU's model name and its widest vector instructions (figures from an AVX2-only
    machine and from an AVX-512 one are not comparable: oneDNN's kernels differ)."""
    name, flags = platform.processor(), set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    return f"{name}, {isa}" if isa else name
