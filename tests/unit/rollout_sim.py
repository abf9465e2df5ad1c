"""A small model of the Deployment controller (both Deployments), the scheduler and kubelet, for
driving rollout.plan over passes (1 pass = 1 look, 5 s). Pure: no cluster."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from tests.unit.test_rollout import NOW

from kubemaas_operator.api import parse_spec
from kubemaas_operator.gpu_ratio import GpuRatio
from kubemaas_operator.observed import DeploymentInfo, PodInfo
from kubemaas_operator.rollout import Plan, plan
from kubemaas_operator.rollout_room import surge_room
from kubemaas_operator.scheduling import PRODUCT_LABEL, NodeInfo

H100 = "NVIDIA-H100-80GB-HBM3"  # the product the tests' specs ask for


GPU = "nvidia.com/gpu"


@dataclass
class Pod:
    name: str
    track: str
    revision: str
    gpus: int
    bound: bool = False
    ready: bool = False
    broken: bool = False  # never Ready (a crash loop, a failing probe)
    late: int = 0  # passes bound before Ready
    tried: bool = False  # the scheduler looked and found no room (PodScheduled=False)
    terminating: bool = False  # deleted, still holding its GPUs (Sim.linger)
    stopped: bool = False  # terminating through a settle: gone at the next


@dataclass
class Sim:
    gpus: int
    sizes: dict[str, int]  # GPUs per pod of each revision
    broken: set[str] = field(default_factory=set)  # revisions whose pods never become Ready
    late: int = 0
    pods: list[Pod] = field(default_factory=list)
    made: int = 0
    main_tpl: str = "aaa"
    main_n: int = 0
    main_strategy: tuple[int, int] = (0, 1)
    now: Any = NOW
    log: list[str] = field(default_factory=list)
    others: int = 0  # GPUs that other workloads' pods hold (the index's `used`)
    unschedulable: bool = False  # Pending pods report Unschedulable, as the scheduler's do
    # a deleted pod stays, terminating and holding its GPUs, for the next look (a kubelet's
    # graceful stop; the Deployment controller counts it gone at once)
    linger: bool = False

    def info(self) -> list[PodInfo]:
        return [PodInfo(name=p.name, phase="Running" if p.bound else "Pending",
                        node="n" if p.bound else "", ready=p.ready, revision=p.revision,
                        track=p.track, terminating=p.terminating, unschedulable_message=(
                            "0/1 nodes are available: 1 Insufficient nvidia.com/gpu"
                            if p.tried and not p.bound else "")) for p in self.pods]

    def mine(self, track: str) -> list[Pod]:
        return [p for p in self.pods if p.track == track and not p.terminating]

    def add(self, track: str, revision: str) -> None:
        self.made += 1
        self.pods.append(Pod(f"{track}-{self.made}", track, revision, self.sizes[revision],
                             broken=revision in self.broken, late=self.late))

    def drop(self, victims: list[Pod], n: int) -> None:
        for p in sorted(victims, key=lambda p: (p.ready, p.bound))[:max(0, n)]:
            if self.linger and p.bound:
                p.terminating, p.ready = True, False
            else:
                self.pods.remove(p)

    def scale(self, track: str, revision: str, replicas: int) -> None:
        mine = self.mine(track)
        for _ in range(replicas - len(mine)):
            self.add(track, revision)
        self.drop(mine, len(mine) - replicas)

    def roll(self, track: str, revision: str, replicas: int, surge: int,
             unavailable: int) -> None:
        """The Deployment controller's rolling update of one Deployment."""
        new = [p for p in self.mine(track) if p.revision == revision]
        old = [p for p in self.mine(track) if p.revision != revision]
        if not old:
            self.scale(track, revision, replicas)
            return
        if surge == 0 and unavailable == 0:
            unavailable = 1
        for _ in range(min(replicas, replicas + surge - len(old)) - len(new)):
            self.add(track, revision)
        new = [p for p in self.mine(track) if p.revision == revision]
        floor = replicas - unavailable
        budget = len(old) + len(new) - floor - sum(1 for p in new if not p.ready)
        unhealthy = [p for p in old if not p.ready][:max(0, budget)]
        self.drop(unhealthy, len(unhealthy))
        old = [p for p in old if p not in unhealthy]
        available = sum(1 for p in self.mine(track) if p.ready)
        self.drop(old, min(len(old), available - floor, budget - len(unhealthy)))
        if len(new) > replicas:
            self.drop(new, len(new) - replicas)

    def dep(self) -> DeploymentInfo:
        main = self.mine("main")
        ready = sum(1 for p in main if p.ready)
        return DeploymentInfo(generation=2, observed_generation=2, spec_replicas=self.main_n,
                              revision=self.main_tpl, replicas=len(main), ready_replicas=ready,
                              updated_replicas=sum(1 for p in main if p.revision == self.main_tpl),
                              available_replicas=ready)

    def free(self) -> int:
        return self.gpus - self.others - sum(p.gpus for p in self.pods)

    def ratio(self, desired_hash: str, status: dict[str, Any]) -> GpuRatio:
        cur = (status.get("current") or {}).get("hash", "aaa")
        can = {p.revision for p in self.mine("canary")}
        if not can and not status.get("canary"):  # plain: the stable Deployment's template's
            cur = self.main_tpl  # pods are the stable side's (rollout_gpus)
        was = next((self.sizes[r] for r in can if r not in (desired_hash, cur)), 0)
        new = self.sizes[desired_hash]
        if self.main_tpl == desired_hash and can:  # applied: the canary Deployment's (rollout_gpus)
            new, was = self.sizes[sorted(can)[0]], 0
        return GpuRatio("nvidia.com/gpu", new=new, old=self.sizes[cur],
                        was=was, held=(self.gpus - self.others) // self.sizes[cur])

    def apply(self, p: Plan, desired_hash: str, desired: int) -> None:
        cur = (p.status.get("current") or {}).get("hash", self.main_tpl)
        if p.target == "desired":
            self.main_tpl = desired_hash
        elif p.target == "stable":
            self.main_tpl = cur
        if p.deployment_strategy is not None:
            self.main_strategy = p.deployment_strategy
        self.main_n = desired if p.main_replicas is None else p.main_replicas
        self.roll("main", self.main_tpl, self.main_n, *self.main_strategy)
        if p.canary_replicas is None:
            self.scale("canary", desired_hash, 0)
        elif p.hold_canary_template:
            revs = [q.revision for q in self.mine("canary")] or [desired_hash]
            self.scale("canary", revs[0], p.canary_replicas)
        else:
            self.roll("canary", desired_hash, p.canary_replicas, *p.canary_strategy)

    def settle(self) -> None:
        """The scheduler and kubelet: pods bound for `late` passes become Ready, Pending ones
        bind where GPUs are free; pods that a look saw terminating are gone."""
        self.pods = [p for p in self.pods if not p.stopped]
        for p in self.pods:
            p.stopped = p.terminating  # the next look sees it terminating, then it is gone
        for p in self.pods:
            if p.bound and not p.broken and not p.ready:
                if p.late <= 0:
                    p.ready = True
                p.late -= 1
        for p in self.pods:
            free = self.gpus - self.others - sum(q.gpus for q in self.pods if q.bound)
            if not p.bound and p.gpus <= free:
                p.bound = True
            p.tried = self.unschedulable
        self.now += timedelta(seconds=5)

    def ready(self) -> int:
        return sum(1 for p in self.pods if p.ready and not p.terminating)

    def run(self, raw: dict[str, Any], revision: str, desired: int | None,
            status: dict[str, Any], passes: int) -> tuple[dict[str, Any], int]:
        """Passes of plan -> apply -> scheduler/kubelet: the last status and the fewest Ready
        seen. `desired` None: the autoscaler's, the stable Deployment's replicas (reconcile)."""
        lowest = self.ready()
        for _ in range(passes):
            want = self.main_n if desired is None else desired
            p = self.look(raw, revision, want, status)
            status = p.status
            self.apply(p, revision, want)
            lowest = min(lowest, self.ready())
            self.settle()
            assert sum(q.gpus for q in self.pods if q.bound) <= self.gpus - self.others
        return status, lowest

    def look(self, raw: dict[str, Any], desired_hash: str, desired: int,
             status: dict[str, Any]) -> Plan:
        spec = parse_spec(raw)
        return plan(spec, raw, desired_hash, self.dep(), self.info(), desired,
                    self.spare(desired_hash, desired), status, self.now,
                    gpu=self.ratio(desired_hash, status),
                    room=surge_room(spec, [self.node()], {"n": {GPU: self.others}},
                                    {"n": {GPU: self.held()}}, (),
                                    self.info(), desired))

    def node(self) -> NodeInfo:
        """The one pool of GPUs, as a node of the product the tests' specs ask for."""
        return NodeInfo("n", labels={PRODUCT_LABEL: H100}, allocatable={GPU: self.gpus})

    def held(self) -> int:
        """GPUs the model's bound pods hold (the operator's index of bound pods)."""
        return sum(p.gpus for p in self.pods if p.bound)

    def spare(self, desired_hash: str, desired: int) -> int:
        """As reconcile_targets counts it: the pods of the spec's size the GPUs hold, the
        model's own counted as free, beyond `desired` (the room a plain rollout's surge has is
        rollout_room.surge_room's, in look)."""
        return max(0, (self.gpus - self.others) // self.sizes[desired_hash] - desired)
