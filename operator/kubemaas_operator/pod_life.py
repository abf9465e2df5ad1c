"""PURE: where a runtime pod is in its life — downloading the model, loading it, or dead of GPU
memory — from the pod's own status, and what the model's status says about it.

The stages are read from what the kubelet reports, so they hold for any model format and engine:

  Downloading  an init container named `fetch` (the contract: the container that brings the model
               onto the pod) is running; or the model's ModelCache is not Ready yet (then with
               its progress, read defensively from the cache's status: bytesDone, bytesTotal,
               phase — a cache without them shows no progress)
  Loading      every init container is done and the main container runs but is not Ready yet
               (an engine reading weights and warming up); while its startup probe has not
               passed (`started: false`) it is Loading however long that takes, never NotReady
  ContainerCreating
               the pod is on a node and none of its containers has started: the kubelet pulls
               images or mounts volumes (a Secret the spec names that does not exist, such as
               the API keys' or the TLS pair's, keeps the pod here for ever: the kubelet says
               which in the pod's Events, which the operator does not read)
  OutOfGPUMemory
               a container ended with a termination message that says the GPU ran out of memory,
               as torch and vLLM print it. The runtime container's terminationMessagePolicy is
               FallbackToLogsOnError, so an engine that dies without writing
               /dev/termination-log leaves the tail of its log there, and that is read here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

FETCH_CONTAINER = "fetch"
DOWNLOADING, LOADING, OUT_OF_GPU_MEMORY = "Downloading", "Loading", "OutOfGPUMemory"
CREATING = "ContainerCreating"

# What torch and vLLM print when the GPU has too little memory at load (lower-cased).
#   torch:  "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB ..."
#           (torch.cuda.OutOfMemoryError in older versions), "CUDA error: out of memory"
#   vLLM:   "ValueError: No available memory for the cache blocks. Try increasing
#           gpu_memory_utilization when initializing the engine." (the V0 engine);
#           "To serve at least one request with the models's max seq len (40960), (5.62 GiB KV
#           cache is needed, which is larger than the available KV cache memory (4.50 GiB). ...
#           Try increasing `gpu_memory_utilization` or decreasing `max_model_len`" (V1);
#           "Free memory on device (6.92/8.0 GiB) on startup is less than desired GPU memory
#           utilization (0.9, 7.2 GiB)" (another process holds the GPU's memory)
OOM_MARKERS = (
    "cuda out of memory",
    "outofmemoryerror",
    "cuda error: out of memory",
    "cublas_status_alloc_failed",
    "no available memory for the cache blocks",
    "larger than the available kv cache memory",
    "insufficient gpu memory",
    "on startup is less than desired gpu memory utilization",
)
_MESSAGE_LIMIT = 400


def is_gpu_oom(text: str) -> bool:
    low = text.lower()
    return any(marker in low for marker in OOM_MARKERS)


def _oom_line(text: str) -> str:
    """The line of a termination message that says so (the last one), cut to a readable size."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    hit = next((line for line in reversed(lines) if is_gpu_oom(line)), text.strip())
    return hit if len(hit) <= _MESSAGE_LIMIT else hit[: _MESSAGE_LIMIT - 1] + "…"


def _statuses(pod: Mapping[str, Any]) -> list[tuple[bool, Mapping[str, Any]]]:
    status = pod.get("status") or {}
    return [*((True, cs) for cs in status.get("initContainerStatuses") or []),
            *((False, cs) for cs in status.get("containerStatuses") or [])]


def out_of_gpu_memory(pod: Mapping[str, Any]) -> str:
    """'container NAME: LINE' of a container whose last termination says the GPU ran out of
    memory, or ''."""
    for _, cs in _statuses(pod):
        for where in ("state", "lastState"):
            term = (cs.get(where) or {}).get("terminated") or {}
            message = term.get("message") or ""
            if isinstance(message, str) and message and is_gpu_oom(message):
                return f"container {cs.get('name', '?')}: {_oom_line(message)}"
    return ""


def stage(pod: Mapping[str, Any]) -> str:
    """DOWNLOADING, LOADING, CREATING or '' (not scheduled, Ready, or somewhere the status
    explains)."""
    statuses = _statuses(pod)
    if _creating(pod, statuses):
        return CREATING
    for init, cs in statuses:
        if init and cs.get("name") == FETCH_CONTAINER and (cs.get("state") or {}).get("running"):
            return DOWNLOADING
    inits_done = all((cs.get("state") or {}).get("terminated") is not None
                     or ((cs.get("state") or {}).get("running") and cs.get("started"))
                     for init, cs in statuses if init)  # sidecars (restartPolicy Always) run
    mains = [cs for init, cs in statuses if not init]
    if inits_done and mains and not all(cs.get("ready") for cs in mains) and any(
            (cs.get("state") or {}).get("running") for cs in mains):
        return LOADING
    return ""


def _creating(pod: Mapping[str, Any], statuses: list[tuple[bool, Mapping[str, Any]]]) -> bool:
    """On a node, and no container has ever run: every one waits (ContainerCreating for the
    main containers, PodInitializing behind init containers) with no earlier state."""
    if not (pod.get("spec") or {}).get("nodeName") or not statuses:
        return False
    waits = []
    for _, cs in statuses:
        state = cs.get("state") or {}
        if cs.get("lastState") or state.get("running") or state.get("terminated"):
            return False
        waits.append((state.get("waiting") or {}).get("reason"))
    return all(w in ("ContainerCreating", "PodInitializing") for w in waits)


def starting(pod: Mapping[str, Any]) -> bool:
    """A main container runs but its startup probe has not passed yet (`started: false`): the
    engine is still loading within the budget its startup probe gives it, so it is Loading
    however long that takes, not NotReady (a startup probe that runs out restarts it)."""
    return any(not init and (cs.get("state") or {}).get("running") and cs.get("started") is False
               for init, cs in _statuses(pod))


class _Pod(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def terminating(self) -> bool: ...
    @property
    def ready(self) -> bool: ...
    @property
    def stage(self) -> str: ...
    @property
    def out_of_gpu_memory(self) -> str: ...


@dataclass(frozen=True)
class CacheProgress:
    """The ModelCache a model reads its weights from, as far as its status says."""

    name: str
    phase: str = ""  # Pending | Downloading | Ready | Failed ('' when the cache says nothing)
    bytes_done: int | None = None
    bytes_total: int | None = None

    @property
    def ready(self) -> bool:
        return self.phase == "Ready"

    def describe(self) -> str:
        what = f"ModelCache {self.name} is {self.phase or 'not Ready'}"
        done, total = self.bytes_done, self.bytes_total
        if done is not None and total:
            return f"{what}: {_gib(done)} of {_gib(total)} ({100 * done // total}%)"
        if done is not None:
            return f"{what}: {_gib(done)} so far"
        return what


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def cache_name(raw_spec: Mapping[str, Any]) -> str | None:
    """The ModelCache `spec.model.cache` names ("NAME" or {name: NAME}), or None."""
    ref = (raw_spec.get("model") or {}).get("cache") if isinstance(raw_spec, Mapping) else None
    if isinstance(ref, Mapping):
        ref = ref.get("name")
    return ref if isinstance(ref, str) and ref else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def cache_progress(name: str, cache: Mapping[str, Any] | None) -> CacheProgress | None:
    """A ModelCache object -> its progress; None when there is no such object to read."""
    if cache is None:
        return None
    raw = cache.get("status")
    status: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    phase = status.get("phase")
    phase = phase if isinstance(phase, str) else ""
    return CacheProgress(name=name, phase=phase, bytes_done=_count(status.get("bytesDone")),
                         bytes_total=_count(status.get("bytesTotal")))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def life_reason(pods: Sequence[_Pod],
                cache: CacheProgress | None = None) -> tuple[str, str] | None:
    """(Downloading | Loading, message) for a model whose replicas are on their way, or None."""
    live = [p for p in pods if not p.terminating and not p.ready]
    fetching = [p for p in live if p.stage == DOWNLOADING]
    if cache is not None and not cache.ready and cache.phase != "Failed":
        pods_part = (f"; {_plural(len(fetching), 'pod')} waiting for it, e.g. "
                     f"{fetching[0].name}" if fetching else "")
        return DOWNLOADING, f"{cache.describe()}{pods_part}"
    if fetching:
        return DOWNLOADING, (f"{_plural(len(fetching), 'pod')} fetching the model (init "
                             f"container {FETCH_CONTAINER}), e.g. pod {fetching[0].name}")
    loading = [p for p in live if p.stage == LOADING]
    if loading:
        return LOADING, (f"{_plural(len(loading), 'pod')} loading the model (the engine runs, "
                         f"not Ready yet), e.g. pod {loading[0].name}")
    creating = [p for p in live if p.stage == CREATING]
    if creating:
        return CREATING, (
            f"{_plural(len(creating), 'pod')} on a node with no container started yet: the "
            "kubelet pulls the image and mounts the volumes (a Secret or ConfigMap the pod "
            "mounts that does not exist keeps it here; `kubectl describe pod "
            f"{creating[0].name}` names it), e.g. pod {creating[0].name}")
    return None


SUGGESTION = ("give each replica more GPU memory (more GPUs per replica in spec.gpu.count, or a "
              "product with more memory) or ask for less: a smaller maxModelLen or maxNumSeqs")


def oom_problem(pods: Sequence[_Pod], named: bool = False) -> tuple[str, str] | None:
    """(OutOfGPUMemory, message with the termination message and what to change), or None.
    `named`: the message names the reason too (a rollback's message quotes it)."""
    dead = [p for p in pods if not p.terminating and not p.ready and p.out_of_gpu_memory]
    if not dead:
        return None
    p = dead[0]
    said = f"{OUT_OF_GPU_MEMORY}: " if named else ""
    return OUT_OF_GPU_MEMORY, (f"pod {p.name}: {said}the engine ran out of GPU memory while "
                               f"loading ({p.out_of_gpu_memory}); {SUGGESTION}")
