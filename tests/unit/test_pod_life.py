"""pod_life: Downloading / Loading / OutOfGPUMemory from a pod's own status (pure), and what the
model's status and the rollout make of them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubemaas_operator import pod_life
from kubemaas_operator.api import parse_spec
from kubemaas_operator.observed import DeploymentInfo, pod_info
from kubemaas_operator.rollout import failing
from kubemaas_operator.status import Observed, compute_status

NOW = datetime(2026, 11, 30, 18, 0, 0, tzinfo=UTC)
SPEC = parse_spec({"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
                   "runtime": {"image": "img"}, "replicas": 1})
RUNNING = {"running": {"startedAt": "2026-11-30T17:59:50Z"}}
DONE = {"terminated": {"exitCode": 0, "reason": "Completed"}}
# Termination messages as torch and vLLM print them (see pod_life.OOM_MARKERS for the sources).
TORCH_OOM = ("Traceback (most recent call last):\n  File \"/app/serve.py\", line 12\n"
             "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has "
             "a total capacity of 79.10 GiB of which 1.02 GiB is free.")
VLLM_V0 = ("ValueError: No available memory for the cache blocks. Try increasing "
           "`gpu_memory_utilization` when initializing the engine.")
VLLM_V1 = ("ValueError: To serve at least one request with the models's max seq len (131072), "
           "(16.00 GiB KV cache is needed, which is larger than the available KV cache memory "
           "(9.50 GiB). Based on the available memory, the estimated maximum model length is "
           "77824. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
           "initializing the engine.")
VLLM_FREE = ("ValueError: Free memory on device (6.92/79.1 GiB) on startup is less than desired "
             "GPU memory utilization (0.9, 71.2 GiB).")


def pod(name: str = "m-1", phase: str = "Pending", init: list[dict[str, Any]] | None = None,
        main: list[dict[str, Any]] | None = None, ready: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}
    if init is not None:
        status["initContainerStatuses"] = init
    if main is not None:
        status["containerStatuses"] = main
    return {"metadata": {"name": name, "labels": {"serving.kubemaas.io/revision": "r2"}},
            "spec": {"nodeName": "gpu-0"}, "status": status}


def fetch(state: dict[str, Any]) -> dict[str, Any]:
    return {"name": "fetch", "ready": False, "state": state}


def runtime(state: dict[str, Any], ready: bool = False, **extra: Any) -> dict[str, Any]:
    return {"name": "runtime", "ready": ready, "started": True, "state": state, **extra}


def crashed(message: str) -> dict[str, Any]:
    return runtime({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                   lastState={"terminated": {"exitCode": 1, "reason": "Error",
                                             "message": message}})


def status_of(*pods: dict[str, Any], cache: pod_life.CacheProgress | None = None,
              ready: int = 0) -> dict[str, Any]:
    dep = DeploymentInfo(generation=1, observed_generation=1, spec_replicas=1, revision="r2",
                         replicas=1, ready_replicas=ready, updated_replicas=1,
                         available_replicas=ready)
    return compute_status(SPEC, Observed(
        name="m", namespace="ns", generation=1, now=NOW, desired_revision="r2", deployment=dep,
        pods=[pod_info(p) for p in pods], url="http://m", cache=cache)).status


def ready_reason(status: dict[str, Any]) -> str:
    return str(next(c for c in status["conditions"] if c["type"] == "Ready")["reason"])


def test_stages_follow_the_pod() -> None:
    assert pod_life.stage(pod()) == ""  # nothing reported yet
    assert pod_life.stage(pod(init=[fetch(RUNNING)], main=[runtime(
        {"waiting": {"reason": "PodInitializing"}})])) == "Downloading"
    assert pod_life.stage(pod("m", "Running", init=[fetch(DONE)],
                              main=[runtime(RUNNING)])) == "Loading"
    assert pod_life.stage(pod("m", "Running", main=[runtime(RUNNING)])) == "Loading"
    assert pod_life.stage(pod("m", "Running", init=[fetch(DONE)],
                              main=[runtime(RUNNING, ready=True)], ready=True)) == ""
    # another init container than fetch running is not a download (e.g. the optimize step)
    other = {"name": "optimize", "ready": False, "state": RUNNING}
    assert pod_life.stage(pod(init=[other], main=[runtime({"waiting": {}})])) == ""


def creating(**extra: Any) -> dict[str, Any]:
    """A pod as the kubelet reports it while a Secret volume it mounts does not exist (Events:
    FailedMount ... secret "keys" not found): nothing has run, every container waits."""
    return pod(init=[{"name": "fetch", "ready": False, "restartCount": 0, "started": False,
                      "state": {"waiting": {"reason": "PodInitializing"}}, **extra}],
               main=[runtime({"waiting": {"reason": "ContainerCreating"}}, started=False)])


def test_a_pod_whose_containers_never_started_is_container_creating() -> None:
    assert pod_life.stage(creating()) == "ContainerCreating"
    st = status_of(creating())
    assert ready_reason(st) == "ContainerCreating" and st["phase"] == "Pending"
    message = next(c for c in st["conditions"] if c["type"] == "Ready")["message"]
    assert "a Secret or ConfigMap" in message and "kubectl describe pod m-1" in message
    # not on a node yet (the scheduler's reasons say why), or a container that ran before
    unscheduled = creating()
    unscheduled["spec"] = {}
    assert pod_life.stage(unscheduled) == ""
    assert pod_life.stage(creating(lastState={"terminated": {"exitCode": 1}})) == ""
    pulling_behind_a_done_fetch = pod(init=[fetch(DONE)], main=[runtime(
        {"waiting": {"reason": "ContainerCreating"}}, started=False)])
    assert pod_life.stage(pulling_behind_a_done_fetch) == ""


@pytest.mark.parametrize("message", [TORCH_OOM, VLLM_V0, VLLM_V1, VLLM_FREE,
                                     "RuntimeError: CUDA error: out of memory"])
def test_out_of_gpu_memory_messages(message: str) -> None:
    found = pod_life.out_of_gpu_memory(pod("m", "Running", main=[crashed(message)]))
    assert found.startswith("container runtime: ") and message.splitlines()[-1][:60] in found


def test_other_crashes_are_not_out_of_gpu_memory() -> None:
    assert pod_life.out_of_gpu_memory(pod("m", "Running", main=[crashed(
        "model server exited with status 1")])) == ""
    assert not pod_life.is_gpu_oom("OOMKilled")  # the host's memory: the kubelet says so itself


def test_downloading_then_loading_then_ready_in_the_status() -> None:
    downloading = status_of(pod(init=[fetch(RUNNING)], main=[runtime({"waiting": {}})]))
    assert ready_reason(downloading) == "Downloading" and downloading["phase"] == "Pending"
    assert "init container fetch" in downloading["reason"]
    loading = status_of(pod("m-1", "Running", init=[fetch(DONE)], main=[runtime(RUNNING)]))
    assert ready_reason(loading) == "Loading" and loading["phase"] == "Pending"
    ready = status_of(pod("m-1", "Running", init=[fetch(DONE)],
                          main=[runtime(RUNNING, ready=True)], ready=True), ready=1)
    assert ready_reason(ready) == "Ready" and ready["phase"] == "Ready"


def test_out_of_gpu_memory_in_the_status_beats_the_crash_loop() -> None:
    st = status_of(pod("m-1", "Running", main=[crashed(VLLM_V1)]))
    assert ready_reason(st) == "OutOfGPUMemory" and st["phase"] == "Degraded"
    message = next(c for c in st["conditions"] if c["type"] == "Ready")["message"]
    assert "larger than the available KV cache memory" in message
    assert "more GPUs" in message and "maxModelLen" in message


def test_out_of_gpu_memory_fails_a_rollout_like_a_crash() -> None:
    pods = [pod_info(pod("m-1", "Running", main=[crashed(TORCH_OOM)]))]
    found = failing(pods, "r2")
    assert found is not None and found[0] == "OutOfGPUMemory" and "CUDA out of memory" in found[1]
    assert "OutOfGPUMemory" in found[1]  # a rollback quotes it
    assert failing(pods, "r1") is None  # another revision's pod


def test_cache_progress_read_defensively() -> None:
    assert pod_life.cache_name({"model": {"cache": "llama"}}) == "llama"
    assert pod_life.cache_name({"model": {"cache": {"name": "llama"}}}) == "llama"
    assert pod_life.cache_name({"model": {}}) is None
    assert pod_life.cache_progress("c", None) is None
    bare = pod_life.cache_progress("c", {"metadata": {"name": "c"}})
    assert bare is not None and bare.describe() == "ModelCache c is not Ready"
    odd = pod_life.cache_progress("c", {"status": {"phase": 3, "bytesDone": "x",
                                                   "bytesTotal": True}})
    assert odd is not None and odd.describe() == "ModelCache c is not Ready"
    half = pod_life.cache_progress("c", {"status": {"phase": "Downloading",
                                                    "bytesDone": 8 * 2**30,
                                                    "bytesTotal": 16 * 2**30}})
    assert half is not None
    assert half.describe() == "ModelCache c is Downloading: 8.0 GiB of 16.0 GiB (50%)"


def test_a_cache_that_is_not_ready_is_downloading_with_its_progress() -> None:
    cache = pod_life.CacheProgress("llama", "Downloading", 3 * 2**30, 12 * 2**30)
    st = status_of(pod("m-1", "Pending"), cache=cache)
    assert ready_reason(st) == "Downloading"
    assert "ModelCache llama is Downloading: 3.0 GiB of 12.0 GiB (25%)" in st["reason"]
    done = pod_life.CacheProgress("llama", "Ready", 12 * 2**30, 12 * 2**30)
    assert ready_reason(status_of(pod("m-1", "Running", main=[runtime(RUNNING)]),
                                  cache=done)) == "Loading"


def test_a_pod_within_its_startup_probe_is_loading_not_stuck() -> None:
    """Past the not-ready grace (60 s), a pod whose startup probe has not passed yet
    (`started: false`) still loads; once started and still not Ready, it is NotReady."""
    long_ago = {"running": {"startedAt": "2026-11-30T17:50:00Z"}}
    loading = pod("m-1", "Running", main=[runtime(long_ago, started=False)])
    assert pod_life.starting(loading)
    assert ready_reason(status_of(loading)) == "Loading"
    stuck = pod("m-1", "Running", main=[runtime(long_ago)])
    assert not pod_life.starting(stuck)
    assert ready_reason(status_of(stuck)) == "NotReady"
