"""A third revision of the same pod size mid-canary replaces the canary's pods in place: the
canary Deployment's rolling update keeps the model's Ready replicas at or above the floor the
rollout keeps (desired less maxUnavailable's slack). Pure: rollout.plan driven over passes
against a small model of the Deployment controller, the scheduler and kubelet."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.unit.rollout_sim import Pod
from tests.unit.test_canary_gpu_ratio import TWO, raw, stable
from tests.unit.test_rollout import NOW, dep

from kubemaas_operator.api import parse_spec
from kubemaas_operator.canary import swap_strategy
from kubemaas_operator.gpu_ratio import GpuRatio
from kubemaas_operator.observed import PodInfo
from kubemaas_operator.rollout import Plan, plan


@dataclass
class Cluster:
    """GPUs, and the model's pods as the controllers move them (1 pass = 1 look)."""
    gpus: int
    pods: list[Pod] = field(default_factory=list)
    made: int = 0
    lowest: int = 1 << 30  # the fewest Ready replicas seen

    def info(self) -> list[PodInfo]:
        return [PodInfo(name=p.name, phase="Running" if p.bound else "Pending",
                        node="n" if p.bound else "", ready=p.ready, revision=p.revision,
                        track=p.track) for p in self.pods]

    def add(self, track: str, revision: str, gpus: int) -> None:
        self.made += 1
        self.pods.append(Pod(f"{track}-{self.made}", track, revision, gpus))

    def drop(self, victims: list[Pod], n: int) -> None:
        for p in sorted(victims, key=lambda p: (p.ready, p.bound))[:max(0, n)]:
            self.pods.remove(p)

    def scale(self, track: str, revision: str, gpus: int, replicas: int) -> None:
        mine = [p for p in self.pods if p.track == track]
        for _ in range(replicas - len(mine)):
            self.add(track, revision, gpus)
        self.drop(mine, len(mine) - replicas)

    def roll(self, revision: str, gpus: int, replicas: int, surge: int,
             unavailable: int) -> None:
        """The Deployment controller's rolling update of the canary Deployment."""
        new = [p for p in self.pods if p.track == "canary" and p.revision == revision]
        old = [p for p in self.pods if p.track == "canary" and p.revision != revision]
        if not old:
            self.scale("canary", revision, gpus, replicas)
            return
        for _ in range(min(replicas, replicas + surge - len(old)) - len(new)):
            self.add("canary", revision, gpus)
        new = [p for p in self.pods if p.track == "canary" and p.revision == revision]
        floor = replicas - unavailable
        budget = len(old) + len(new) - floor - sum(1 for p in new if not p.ready)
        unhealthy = [p for p in old if not p.ready][:max(0, budget)]
        self.drop(unhealthy, len(unhealthy))
        old = [p for p in old if p not in unhealthy]
        available = sum(1 for p in self.pods if p.track == "canary" and p.ready)
        self.drop(old, min(len(old), available - floor, budget - len(unhealthy)))

    def settle(self) -> None:
        """Ready counted at its lowest (before new pods run), then the scheduler and kubelet:
        pods bound last time become Ready, Pending ones bind where GPUs are free."""
        self.lowest = min(self.lowest, sum(1 for p in self.pods if p.ready))
        for p in self.pods:
            p.ready = p.ready or (p.bound and not p.broken)
        for p in self.pods:
            free = self.gpus - sum(q.gpus for q in self.pods if q.bound)
            if not p.bound and p.gpus <= free:
                p.bound = True

    def apply(self, p: Plan, revision: str, gpus: int, desired: int) -> None:
        self.scale("main", "aaa", 1, desired if p.main_replicas is None else p.main_replicas)
        if p.canary_replicas is None:
            self.scale("canary", revision, gpus, 0)
        elif not p.hold_canary_template:
            self.roll(revision, gpus, p.canary_replicas, *p.canary_strategy)
        self.settle()


def drive(c: Cluster, spec: dict[str, Any], revision: str, gpu: GpuRatio, status: Any,
          passes: int) -> Plan:
    s = parse_spec(spec)
    desired = int(spec["replicas"])
    out = None
    for _ in range(passes):
        main = sum(1 for p in c.pods if p.track == "main")
        out = plan(s, spec, revision, dep("aaa", main, main, main), c.info(), desired, 0,
                   status, NOW, gpu=gpu)
        status = out.status
        c.apply(out, revision, gpu.new, desired)
    assert out is not None
    return out


def five_on_five() -> tuple[dict[str, Any], Cluster]:
    """5 x 1 GPU Ready on 5 GPUs; a spec of 2-GPU pods, maxUnavailable 2, a 40 % canary step."""
    r = {**raw(5), "rollout": {"maxUnavailable": 2, "canary": {
        "steps": [{"weight": 40}, {"weight": 100}]}}}
    c = Cluster(gpus=5)
    c.scale("main", "aaa", 1, 5)
    c.settle()
    c.settle()
    return r, c


def test_a_third_revision_of_the_same_pod_size_keeps_the_ready_floor() -> None:
    """5 x 1 GPU on 5 GPUs, maxUnavailable 2, a 40% step of 2-GPU canary pods: one canary pod
    runs Ready beside 2 stable replicas (3 Ready: the floor, 5 - 2), the second cannot fit.
    A new image of the same 2-GPU pods: the canary Deployment (maxSurge 0, maxUnavailable 1)
    took its Ready pod away at once, 2 Ready. Now at the floor its new pod comes first: the
    stable side gets a replica back into the free GPU, then the old canary pod goes."""
    r, c = five_on_five()
    c.lowest = 5
    p = drive(c, r, "bbb", TWO, stable(5), 6)
    assert p.status["reason"] == "CanaryNeedsGPUs" and c.lowest == 3
    assert sorted((q.track, q.ready) for q in c.pods) == [
        ("canary", True), ("main", True), ("main", True)]
    image = {**r, "runtime": {**r.get("runtime", {}), "image": "img:3"}}
    same = GpuRatio("nvidia.com/gpu", new=2, old=1, was=2)
    p = drive(c, image, "ccc", same, p.status, 8)
    assert c.lowest >= 3, c.lowest  # was 2: the Ready canary pod went first
    assert not p.rolled_back
    assert [q.revision for q in c.pods if q.track == "canary" and q.ready] == ["ccc"]


def test_a_pod_of_the_revision_left_that_is_never_ready_makes_way() -> None:
    """As above, but the first canary's pod never becomes Ready, and a fix of the same pod size
    comes while the model sits at its floor with no 2 GPUs free. A new pod first (maxSurge 1,
    maxUnavailable 0) waited Pending behind the broken pod, which the Deployment controller
    keeps while the new one is unavailable, until the revision's deadline rolled it back. The
    broken pod serves nothing: it goes first, and the new pod takes its GPUs."""
    r, c = five_on_five()
    p = drive(c, r, "bbb", TWO, stable(5), 3)
    for q in c.pods:
        q.broken = q.track == "canary"
        q.ready = q.ready and not q.broken
    p = drive(c, r, "bbb", TWO, p.status, 3)
    assert [q.revision for q in c.pods if q.track == "canary" and not q.ready] == ["bbb"]
    c.lowest = sum(1 for q in c.pods if q.ready)
    fixed = {**r, "runtime": {**r.get("runtime", {}), "image": "img:3"}}
    same = GpuRatio("nvidia.com/gpu", new=2, old=1, was=2)
    p = drive(c, fixed, "ccc", same, p.status, 8)
    assert [(q.revision, q.ready) for q in c.pods if q.track == "canary"] == [("ccc", True)]
    assert c.lowest == 3 and not p.rolled_back  # the floor (5 - 2) held throughout


def test_the_swap_strategy() -> None:
    def pod(track: str, revision: str, ready: bool = True) -> PodInfo:
        return PodInfo(name="p", phase="Running", node="n", ready=ready, revision=revision,
                       track=track)
    above = [pod("main", "aaa")] * 3 + [pod("canary", "bbb")]
    assert swap_strategy(above, "ccc", 4, 1) == (0, 1)  # 4 Ready, floor 3
    at = [pod("main", "aaa")] * 2 + [pod("main", "aaa", False), pod("canary", "bbb")]
    assert swap_strategy(at, "ccc", 4, 1) == (1, 0)  # a stable replica not Ready: 3 Ready
    assert swap_strategy(at, "bbb", 4, 1) == (0, 1)  # no pod of a revision the spec left
    broken = [pod("main", "aaa")] * 3 + [pod("canary", "bbb", False)]
    assert swap_strategy(broken, "ccc", 4, 1) == (0, 1)  # at the floor, but it serves nothing
