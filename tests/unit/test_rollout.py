"""rollout.py: revisions, surge-or-replace, rollback decisions (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubemaas_operator.api import SpecError, parse_spec
from kubemaas_operator.observed import DeploymentInfo, PodInfo, pod_info
from kubemaas_operator.render import with_strategy
from kubemaas_operator.rollout import complete, failing, plan
from kubemaas_operator.rollout_strategy import choose_strategy
from kubemaas_operator.timestamps import format_time

NOW = datetime(2026, 11, 23, 1, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(seconds=6)
RAW: dict[str, Any] = {"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
                       "runtime": {"image": "img:1"}, "replicas": 4,
                       "gpu": {"count": 1, "products": ["NVIDIA-H100-80GB-HBM3"]}}


def spec(**rollout: Any) -> Any:
    raw = {**RAW, "rollout": rollout} if rollout else RAW
    return parse_spec(raw)


def dep(revision: str, replicas: int = 4, ready: int = 4, updated: int = 4) -> DeploymentInfo:
    return DeploymentInfo(generation=2, observed_generation=2, spec_replicas=4,
                          revision=revision, replicas=replicas, ready_replicas=ready,
                          updated_replicas=updated, available_replicas=ready)


def pods(revision: str, n: int = 4, ready: bool = True, **extra: Any) -> list[PodInfo]:
    return [PodInfo(name=f"p-{revision}-{i}", phase="Running", node="n", ready=ready,
                    revision=revision, **extra) for i in range(n)]


GOOD = {"current": {"number": 1, "hash": "aaa"}, "stableSpec": RAW}


def test_surge_when_free_gpus_fit_extra_replicas() -> None:
    s = choose_strategy(spec(maxSurge=2), 4, 5)
    assert (s.name, s.max_surge, s.max_unavailable) == ("Surge", 2, 0)
    assert "never drop below 4" in s.message
    assert choose_strategy(spec(maxSurge=3), 4, 1).max_surge == 1  # only what fits


def test_replace_within_max_unavailable_without_free_gpus() -> None:
    s = choose_strategy(spec(maxUnavailable=2), 4, 0)
    assert (s.name, s.max_surge, s.max_unavailable, s.reason) == ("Replace", 0, 2, "NoFreeGPU")
    assert "at least 2 of 4 stay ready" in s.message
    # never the last replica without allowDowntime
    assert choose_strategy(spec(maxUnavailable=9), 4, 0).max_unavailable == 3


def test_single_replica_waits_unless_downtime_allowed() -> None:
    one = parse_spec({**RAW, "replicas": 1})
    s = choose_strategy(one, 1, 0)
    assert s.name == "Wait" and "allowDowntime" in s.message
    s = choose_strategy(parse_spec({**RAW, "replicas": 1, "rollout": {"allowDowntime": True}}),
                        1, 0)
    assert (s.name, s.max_surge, s.max_unavailable) == ("Replace", 0, 1)
    assert choose_strategy(one, 1, 1).name == "Surge"


def test_spec_validation() -> None:
    with pytest.raises(SpecError, match="both be 0"):
        parse_spec({**RAW, "rollout": {"maxSurge": 0, "maxUnavailable": 0}})
    assert parse_spec(RAW).rollout.progress_deadline_seconds == 600


def test_first_revision_completes_and_becomes_current() -> None:
    p = plan(spec(), RAW, "aaa", None, [], 4, 0, {}, NOW)
    assert p.target == "desired" and p.status["update"]["number"] == 1
    p2 = plan(spec(), RAW, "aaa", dep("aaa"), pods("aaa"), 4, 0, p.status, NOW)
    assert "current" not in p2.status and p2.requeue_after  # settling: ready for 5 s first
    p2 = plan(spec(), RAW, "aaa", dep("aaa"), pods("aaa"), 4, 0, p2.status, LATER)
    assert p2.status["current"] == {"number": 1, "hash": "aaa"}
    assert "update" not in p2.status and p2.status["history"][-1]["outcome"] == "Complete"
    assert p2.status["stableSpec"] == RAW and p2.deployment_strategy is None


def test_new_revision_gets_next_number_and_a_strategy() -> None:
    p = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 0, GOOD, NOW)
    assert p.target == "desired" and p.status["update"]["number"] == 2
    assert p.deployment_strategy == (0, 1) and p.view.strategy_reason == "ReplaceRollout"
    p = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 3, GOOD, NOW)
    assert p.deployment_strategy == (1, 0) and p.view.strategy_reason == "SurgeRollout"
    assert p.status["strategy"] == "Surge" and p.status["reason"] == "FreeGPUs"


def test_completion_moves_current_to_previous() -> None:
    p = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 0, GOOD, NOW)
    p = plan(spec(), RAW, "bbb", dep("bbb"), pods("bbb"), 4, 0, p.status, NOW)
    p = plan(spec(), RAW, "bbb", dep("bbb"), pods("bbb"), 4, 0, p.status, LATER)
    assert p.status["current"]["number"] == 2 and p.status["previous"]["hash"] == "aaa"


def test_single_replica_without_room_holds_the_deployment() -> None:
    raw = {**RAW, "replicas": 1}
    p = plan(parse_spec(raw), raw, "bbb", dep("aaa", 1, 1, 1), pods("aaa", 1), 1, 0, GOOD, NOW)
    assert p.target == "hold" and p.view.blocked_reason == "RolloutWaiting"
    assert "allowDowntime" in p.view.blocked_message and p.requeue_after


def test_a_model_at_zero_replicas_rolls_without_a_free_gpu() -> None:
    """Nothing runs (replicas 0, or KEDA took it to zero): nothing to keep serving, so a full
    cluster is no reason to wait; the template changes and no pod starts."""
    raw = {**RAW, "replicas": 0}
    p = plan(parse_spec(raw), raw, "bbb", dep("aaa", 0, 0, 0), [], 0, 0, GOOD, NOW)
    assert p.target == "desired" and p.view.blocked_reason == ""
    assert p.deployment_strategy == (0, 1) and p.status["reason"] == "NoReplicas"
    keda = {k: v for k, v in RAW.items() if k != "replicas"}
    keda["autoscaling"] = {"minReplicas": 0, "maxReplicas": 3, "signal": "queue", "target": 2}
    p = plan(parse_spec(keda), keda, "bbb", dep("aaa", 0, 0, 0), [], 0, 0, GOOD, NOW)
    assert p.target == "desired" and p.view.blocked_reason == ""


def test_a_revision_rolled_out_at_zero_is_judged_when_the_model_wakes() -> None:
    """At zero a revision's template is applied but nothing ran it: it stays the update (not a
    stall), and a crash once the model scales up rolls it back to the good revision."""
    keda = {k: v for k, v in RAW.items() if k != "replicas"}
    keda["autoscaling"] = {"minReplicas": 0, "maxReplicas": 3, "signal": "queue", "target": 2}
    s = parse_spec(keda)
    good = {**GOOD, "stableSpec": keda}
    p = plan(s, keda, "bbb", dep("aaa", 0, 0, 0), [], 0, 0, good, NOW)
    p = plan(s, keda, "bbb", dep("bbb", 0, 0, 0), [], 0, 0, p.status, LATER)
    hour = NOW + timedelta(hours=1)  # idle past progressDeadlineSeconds: not a stall
    idle = p.status
    p = plan(s, keda, "bbb", dep("bbb", 0, 0, 0), [], 0, 0, p.status, hour)
    assert p.status == idle  # nothing to write on each pass while idle
    assert p.status["update"]["idleSince"] == format_time(NOW)
    assert p.status["current"]["hash"] == "aaa" and p.status["update"]["hash"] == "bbb"
    assert not p.rolled_back and p.target == "desired"
    assert "0 replicas" in p.view.strategy_message
    crashed = [PodInfo(name="w", phase="Running", revision="bbb",
                       waiting_reason="CrashLoopBackOff")]
    woken = plan(s, keda, "bbb", dep("bbb", 1, 0, 1), crashed, 1, 0, p.status, hour)
    assert woken.rolled_back and woken.target == "stable"
    # woken, not yet Ready: the progress deadline counts from the wake, not from the apply
    loading = [PodInfo(name="w", phase="Running", revision="bbb")]
    woke = plan(s, keda, "bbb", dep("bbb", 1, 0, 1), loading, 1, 0, p.status, hour)
    assert not woke.rolled_back and "idleSince" not in woke.status["update"]
    assert woke.status["update"]["progressAt"] == format_time(hour)
    # no free GPU at the wake: the pod starting on the revision waits for nothing (a fresh
    # strategy said 'waiting: ... replacing the only replica would leave none serving')
    assert "waiting" not in woke.view.strategy_message, woke.view.strategy_message
    assert woke.status["reason"] == "NoReplicas"
    # a good one completes once its replica stayed Ready
    ok = plan(s, keda, "bbb", dep("bbb", 1, 1, 1), pods("bbb", 1), 1, 0, p.status, hour)
    assert "update" in ok.status
    ok = plan(s, keda, "bbb", dep("bbb", 1, 1, 1), pods("bbb", 1), 1, 0, ok.status,
              hour + timedelta(seconds=6))
    assert ok.status["current"]["hash"] == "bbb" and "update" not in ok.status


# every waiting reason docs/rollouts.md names as a rollback trigger
ROLLBACK_REASONS = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                    "CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff",
                    "RunContainerError"]


def raw_pod(name: str, revision: str, phase: str = "Pending", waiting: str = "",
            terminated: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Pod as the API server returns it, with one container in the given state."""
    state: dict[str, Any] = {}
    if waiting:
        state["waiting"] = {"reason": waiting, "message": f"{waiting} for runtime"}
    if terminated:
        state["terminated"] = terminated
    if not state:
        state["running"] = {"startedAt": "2026-11-23T01:00:00Z"}
    return {"metadata": {"name": name, "labels": {"serving.kubemaas.io/revision": revision}},
            "spec": {"nodeName": "n"},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "False"}],
                       "containerStatuses": [{"name": "runtime", "ready": False,
                                              "state": state}]}}


@pytest.mark.parametrize("reason", ROLLBACK_REASONS)
def test_each_rollback_waiting_reason_is_classified_as_failing(reason: str) -> None:
    info = pod_info(raw_pod("p", "bbb", waiting=reason))
    assert info.waiting_reason == reason and info.waiting_message == f"{reason} for runtime"
    found = failing([info], "bbb")
    assert found == (reason, f"pod p: {reason} ({reason} for runtime)")
    assert failing([info], "aaa") is None  # only the revision being rolled out counts
    assert failing([PodInfo(**{**info.__dict__, "terminating": True})], "bbb") is None


@pytest.mark.parametrize("reason", ["ContainerCreating", "PodInitializing", ""])
def test_waiting_that_can_still_end_well_is_not_failing(reason: str) -> None:
    info = pod_info(raw_pod("p", "bbb", waiting=reason))
    assert info.waiting_reason == "" and failing([info], "bbb") is None


def test_a_failed_pod_is_classified_as_failing() -> None:
    info = pod_info(raw_pod("p", "bbb", phase="Failed", terminated={
        "exitCode": 1, "reason": "Error", "message": "model server exited with status 1"}))
    assert info.phase == "Failed" and info.waiting_reason == ""
    assert info.last_terminated == "Error (exit 1): model server exited with status 1"
    assert failing([info], "bbb") == (
        "ContainerFailed", "pod p failed: Error (exit 1): model server exited with status 1")


@pytest.mark.parametrize("bad", [
    *({"waiting_reason": r, "ready": False} for r in ROLLBACK_REASONS),
    {"phase": "Failed", "ready": False, "last_terminated": "Error (exit 1)"},
], ids=[*ROLLBACK_REASONS, "phase-Failed"])
def test_failing_pods_roll_back_at_once(bad: dict[str, Any]) -> None:
    start = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 0, GOOD, NOW).status
    bad_pod = PodInfo(**{**pods("bbb", 1)[0].__dict__, **bad})
    observed = [*pods("aaa", 3), bad_pod]
    p = plan(spec(), RAW, "bbb", dep("bbb", updated=1), observed, 4, 0, start, NOW)
    assert p.rolled_back and p.target == "stable" and p.stable_spec == RAW
    words = bad.get("waiting_reason") or "failed: Error (exit 1)"
    assert p.view.blocked_reason == "RolledBack" and words in p.view.blocked_message
    assert p.status["failed"]["hash"] == "bbb"
    assert p.status["history"][-1]["outcome"] == "RolledBack"
    # the bad spec is not retried until it changes
    again = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 0, p.status, NOW)
    assert again.target == "stable" and not again.rolled_back
    assert again.view.blocked_reason == "RolledBack"
    # a new spec is tried
    fresh = plan(spec(), RAW, "ccc", dep("aaa"), pods("aaa"), 4, 0, p.status, NOW)
    assert fresh.target == "desired" and fresh.status["update"]["number"] == 3
    assert "failed" not in fresh.status


def test_a_crash_right_after_ready_still_rolls_back() -> None:
    start = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 0, GOOD, NOW).status
    ready = plan(spec(), RAW, "bbb", dep("bbb"), pods("bbb"), 4, 0, start, NOW)
    assert "update" in ready.status  # not complete yet: settling
    crashed = pods("bbb", 4, ready=False, waiting_reason="CrashLoopBackOff")
    p = plan(spec(), RAW, "bbb", dep("bbb", ready=0), crashed, 4, 0, ready.status,
             NOW + timedelta(seconds=2))
    assert p.rolled_back and p.target == "stable"


def test_first_revision_is_not_a_rollout() -> None:
    p = plan(spec(), RAW, "aaa", dep("aaa", ready=1), pods("aaa", 1), 4, 9, {}, NOW)
    assert p.deployment_strategy is None and p.status["reason"] == "FirstRevision"


def test_not_ready_past_the_progress_deadline_rolls_back() -> None:
    s = spec(progressDeadlineSeconds=30)
    start = plan(s, RAW, "bbb", dep("aaa"), pods("aaa"), 4, 0, GOOD, NOW).status
    observed = [*pods("aaa", 3), *pods("bbb", 1, ready=False)]
    p = plan(s, RAW, "bbb", dep("bbb", updated=1), observed, 4, 0, start,
             NOW + timedelta(seconds=20))
    assert not p.rolled_back and p.requeue_after == pytest.approx(10.5)
    p = plan(s, RAW, "bbb", dep("bbb", updated=1), observed, 4, 0, start,
             NOW + timedelta(seconds=31))
    assert p.rolled_back and "progressDeadlineSeconds" in p.view.blocked_message


def test_progress_resets_the_deadline() -> None:
    s = spec(progressDeadlineSeconds=30)
    start = plan(s, RAW, "bbb", dep("aaa"), pods("aaa"), 4, 0, GOOD, NOW).status
    observed = [*pods("aaa", 2), *pods("bbb", 2)]
    mid = plan(s, RAW, "bbb", dep("bbb", updated=2), observed, 4, 0, start,
               NOW + timedelta(seconds=25))
    assert mid.status["update"]["ready"] == 2
    later = plan(s, RAW, "bbb", dep("bbb", updated=2), observed, 4, 0, mid.status,
                 NOW + timedelta(seconds=40))
    assert not later.rolled_back


def test_superseded_and_reverted_revisions_enter_the_history() -> None:
    a = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 0, GOOD, NOW).status
    b = plan(spec(), RAW, "ccc", dep("bbb", updated=1), pods("aaa"), 4, 0, a, NOW).status
    assert b["history"][-1]["outcome"] == "Superseded" and b["update"]["number"] == 3
    c = plan(spec(), RAW, "aaa", dep("ccc", updated=1), pods("aaa"), 4, 0, b, NOW)
    assert c.status["history"][-1]["outcome"] == "Superseded" and "update" not in c.status
    assert c.deployment_strategy == (0, 1)  # the Deployment goes back: a rollout again


def test_complete_needs_every_pod_on_the_revision() -> None:
    assert complete(dep("bbb"), pods("bbb"), "bbb", 4)
    assert not complete(dep("bbb"), [*pods("bbb"), *pods("aaa", 1)], "bbb", 4)
    assert not complete(dep("bbb"), pods("bbb", 3), "bbb", 4)


def test_ended_pods_of_another_revision_do_not_hold_completion_back() -> None:
    # a failed revision's pods that ended (phase Failed) stay in the API as records
    ended = [PodInfo(name="old-0", phase="Failed", node="n", revision="bad",
                     last_terminated="Error (exit 1)")]
    assert complete(dep("ccc"), [*pods("ccc"), *ended], "ccc", 4)
    assert not complete(dep("ccc"), [*pods("ccc", 3), *ended], "ccc", 4)


def test_with_strategy_rehashes() -> None:
    base = {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "m", "annotations": {"serving.kubemaas.io/spec-hash": "x"}},
            "spec": {"template": {}}}
    one, two = with_strategy(base, 1, 0), with_strategy(base, 0, 1)
    assert one["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    h1 = one["metadata"]["annotations"]["serving.kubemaas.io/spec-hash"]
    assert h1 != two["metadata"]["annotations"]["serving.kubemaas.io/spec-hash"] != "x"
    assert "strategy" not in base["spec"]


def test_rollout_module_is_pure() -> None:
    import subprocess
    import sys

    code = ("import sys, kubemaas_operator.rollout; print(','.join(m for m in ('kopf', "
            "'kubernetes', 'urllib3', 'aiohttp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""


def test_a_rollout_keeps_its_strategy_while_capacity_moves() -> None:
    replacing = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 0, GOOD, NOW)
    assert replacing.status["strategy"] == "Replace"
    # a GPU freed for a moment by someone else's replacement does not turn it into a surge
    again = plan(spec(), RAW, "bbb", dep("bbb", updated=1), pods("aaa"), 4, 2,
                 replacing.status, NOW)
    assert again.status["strategy"] == "Replace" and again.deployment_strategy == (0, 1)
    surging = plan(spec(), RAW, "ccc", dep("aaa"), pods("aaa"), 4, 2, GOOD, NOW)
    assert surging.status["strategy"] == "Surge"
    kept = plan(spec(), RAW, "ccc", dep("ccc", updated=1), pods("aaa"), 4, 0, surging.status,
                NOW)
    assert kept.status["strategy"] == "Surge"
    stuck = [*pods("aaa"), PodInfo(name="new", revision="ccc",
                                   unschedulable_message="0/2 nodes are available")]
    switched = plan(spec(), RAW, "ccc", dep("ccc", updated=1), stuck, 4, 0, surging.status, NOW)
    assert switched.status["strategy"] == "Replace"


def test_settle_window_is_a_spec_field() -> None:
    assert parse_spec(RAW).rollout.settle_seconds == 5
    assert spec(settleSeconds=30).rollout.settle_seconds == 30
    with pytest.raises(SpecError, match=r"must not exceed spec\.rollout\.progressDeadlineSeconds"):
        spec(settleSeconds=30, progressDeadlineSeconds=20)
    with pytest.raises(SpecError, match="settleSeconds"):
        spec(settleSeconds=-1)
    # A revision completes only once every replica ran it Ready for the spec's window.
    slow = spec(settleSeconds=30)
    start = plan(slow, RAW, "bbb", dep("aaa"), pods("aaa"), 4, 0, GOOD, NOW).status
    p = plan(slow, RAW, "bbb", dep("bbb"), pods("bbb"), 4, 0, start, NOW)
    p = plan(slow, RAW, "bbb", dep("bbb"), pods("bbb"), 4, 0, p.status, LATER)
    assert "update" in p.status and p.requeue_after is not None and p.requeue_after > 20
    p = plan(slow, RAW, "bbb", dep("bbb"), pods("bbb"), 4, 0, p.status,
             NOW + timedelta(seconds=31))
    assert p.status["current"]["number"] == 2


def test_every_deployment_waits_the_settle_window_before_it_counts_a_pod() -> None:
    from kubemaas_operator.render import RenderContext, render

    ctx = RenderContext(name="m", namespace="ns", uid="u")
    five, thirty = render(spec(), ctx), render(spec(settleSeconds=30), ctx)
    deployment = next(c for c in five.children if c["kind"] == "Deployment")
    assert deployment["spec"]["minReadySeconds"] == 5
    slow = next(c for c in thirty.children if c["kind"] == "Deployment")
    assert slow["spec"]["minReadySeconds"] == 30
    # The window is not part of the pod template: changing it makes no new revision.
    assert five.revision == thirty.revision
    # The canary Deployment keeps it too.
    assert with_strategy(slow, 0, 1, replicas=2, canary=True)["spec"]["minReadySeconds"] == 30


def test_a_revision_that_can_never_fit_rolls_back_before_it_is_applied() -> None:
    never = "one replica needs 9 nvidia.com/gpu on one node, but the largest node ... has 8"
    p = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 0, GOOD, NOW, never=never)
    assert p.rolled_back and p.target == "stable"
    assert never in p.view.blocked_message and p.status["failed"]["hash"] == "bbb"
    # The same for a single replica that would otherwise wait for room.
    raw = {**RAW, "replicas": 1}
    p = plan(parse_spec(raw), raw, "bbb", dep("aaa", 1, 1, 1), pods("aaa", 1), 1, 0, GOOD, NOW,
             never=never)
    assert p.rolled_back and p.target == "stable"
    # A first revision has nothing to go back to: it is reported (status.py), not rolled back.
    p = plan(spec(), RAW, "aaa", None, [], 4, 0, {}, NOW, never=never)
    assert not p.rolled_back and p.target == "desired"


def test_a_revision_whose_pods_cannot_be_created_rolls_back() -> None:
    start = plan(spec(), RAW, "bbb", dep("aaa"), pods("aaa"), 4, 0, GOOD, NOW).status
    broken = DeploymentInfo(generation=3, observed_generation=3, spec_replicas=4,
                            revision="bbb", replicas=3, ready_replicas=3, updated_replicas=0,
                            replica_failure='pods "m-1" is forbidden: no PriorityClass with '
                                            'name gold was found')
    p = plan(spec(), RAW, "bbb", broken, pods("aaa", 3), 4, 0, start, NOW)
    assert p.rolled_back and "PriorityClass gold does not exist" in p.view.blocked_message
    # A quota (FailedCreate) may clear by itself: the progress deadline decides.
    quota = DeploymentInfo(generation=3, observed_generation=3, spec_replicas=4,
                           revision="bbb", replicas=3, ready_replicas=3, updated_replicas=0,
                           replica_failure="exceeded quota: gpus")
    assert not plan(spec(), RAW, "bbb", quota, pods("aaa", 3), 4, 0, start, NOW).rolled_back
