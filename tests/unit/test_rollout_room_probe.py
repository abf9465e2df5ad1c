"""Generated, seeded plain rollouts (no canary) whose pods change size and whose count changes,
driven over passes against tests/unit/rollout_sim.py: 1 or 2 GPUs per pod for each of three
revisions, replicas 1-6, 0-3 GPUs free and 0-2 held by another workload, maxSurge 0-2,
maxUnavailable 0-2, allowDowntime or not, pods Ready late, a second revision arriving mid-rollout,
an autoscaler count raised or lowered mid-rollout, Pending pods reporting Unschedulable (as the
scheduler's do) or not. Never more GPUs bound than there are; the
rollout completes, or waits (RolloutWaiting, NoFreeGPU) only where no pod of its size fits beside
the serving ones and none may go, or where its surge could not finish (its last pod beside the
last serving one), and then before it starts, not halfway with a pod Pending; a healthy
revision is never rolled back; Ready never falls below the floor the strategy promises (the
count less maxUnavailable, one kept serving without allowDowntime). Pure."""

from __future__ import annotations

import random
from typing import Any

import pytest
from tests.unit.rollout_sim import Sim
from tests.unit.test_rollout_room import spec

PASSES = 60


def _setup(rnd: random.Random) -> tuple[Sim, dict[str, Any], dict[str, Any]]:
    """The Sim with aaa's replicas Ready, aaa's status, and the case's knobs."""
    sizes = {r: rnd.choice([1, 2]) for r in ("aaa", "bbb", "ccc")}
    n = rnd.randint(1, 6)
    others = rnd.choice([0, 0, 1, 2])
    gpus = n * max(sizes.values()) + rnd.randint(0, 3) + others
    knobs = {"maxSurge": rnd.randint(0, 2), "maxUnavailable": rnd.randint(0, 2),
             "allowDowntime": rnd.random() < 0.2}
    if knobs["maxSurge"] == 0 and knobs["maxUnavailable"] == 0:
        knobs["maxUnavailable"] = 1
    s = Sim(gpus=gpus, sizes=sizes, main_n=n, late=rnd.choice([0, 0, 1]), others=others,
            unschedulable=rnd.random() < 0.5)
    s.scale("main", "aaa", n)
    for _ in range(3):
        s.settle()
    status = {"current": {"number": 1, "hash": "aaa"}, "stableSpec": spec(n, sizes["aaa"],
                                                                          "img:1", **knobs)}
    return s, status, knobs


def _floor(n: int, knobs: dict[str, Any]) -> int:
    """The fewest Ready replicas a rollout of `n` promises (a surge promises `n`)."""
    return n - min(knobs["maxUnavailable"], n if knobs["allowDowntime"] else n - 1)


def _case(seed: int) -> list[str]:
    """What went wrong in one generated case (empty: nothing)."""
    rnd = random.Random(seed)
    s, status, knobs = _setup(rnd)
    n = s.main_n
    autoscaled = rnd.random() < 0.4
    steps: list[tuple[str, int, int]] = []  # (revision, count, passes)
    if rnd.random() < 0.5:  # a second revision arrives mid-rollout
        steps.append(("bbb", n, rnd.randint(1, 6)))
    last = "ccc" if steps else "bbb"
    if autoscaled:  # the autoscaler moves the count while it rolls
        most = (s.gpus - s.others) // max(s.sizes.values())
        steps.append((last, n, rnd.randint(1, 4)))
        n = rnd.randint(1, max(1, most))
    steps.append((last, n, PASSES))
    lowest_ok, seen, wrong = True, [], []
    floor = min(_floor(n, knobs), _floor(s.main_n, knobs), s.ready())
    for revision, count, passes in steps:
        raw = spec(None if autoscaled else count, s.sizes[revision],
                   f"img:{revision}", **knobs)
        for _ in range(passes):
            p = s.look(raw, revision, count, status)
            status = p.status
            s.apply(p, revision, count)
            seen.append((status.get("reason"), sorted((q.revision, q.ready) for q in s.pods)))
            if s.ready() < floor:
                lowest_ok = False
            s.settle()
            if sum(q.gpus for q in s.pods if q.bound) > s.gpus - s.others:
                return ["more GPUs bound than there are"]
    if status.get("failed"):
        wrong.append(f"a healthy revision rolled back: {status['message']}")
    elif any(x != seen[-1] for x in seen[-5:]):
        wrong.append("no settle")
    elif status.get("reason") != "UpToDate" and not _may_wait(s, last, n, knobs):
        wrong.append(f"stuck: {status.get('reason')}: {status.get('message')}")
    elif len(steps) == 1 and any(q.revision == last and not q.bound for q in s.pods):
        # (one revision at one count: pods of a superseded revision's size, or a count moved
        # mid-surge, may still leave a surge pod Pending; see docs/rollouts.md)
        wrong.append(f"stuck halfway, a pod Pending: {status.get('reason')}")
    if not lowest_ok:
        wrong.append(f"Ready below the floor {floor}")
    return wrong


def _may_wait(s: Sim, revision: str, n: int, knobs: dict[str, Any]) -> bool:
    """A rollout may wait only where none of the serving pods may go (one replica without
    allowDowntime, or maxUnavailable 0) and no pod of its size may surge beside them (maxSurge
    0, or too few GPUs free), or a surge could not finish: its last pod needs room beside
    n - 1 new pods and the last serving one."""
    none_may_go = knobs["maxUnavailable"] == 0 or (n <= 1 and not knobs["allowDowntime"])
    size = s.sizes[revision]
    last_fits = s.gpus - s.others >= n * size + s.sizes[s.main_tpl]
    return none_may_go and (knobs["maxSurge"] == 0 or s.free() < size or not last_fits)


@pytest.mark.parametrize("first", range(0, 160, 40))
def test_generated_plain_rollouts_keep_the_invariants(first: int) -> None:
    cases = {seed: _case(seed) for seed in range(first, first + 40)}
    assert {seed: wrong for seed, wrong in cases.items() if wrong} == {}
