"""PURE: the engine flags a language model's spec owns, refused in `spec.runtime.llm.extraArgs`
and `spec.runtime.args`.

Both lists are appended after the flags the operator renders, and both engines' parsers keep the
last value: `--tensor-parallel-size 4` there ran vLLM on four GPUs in a pod that asked for two
(its workers fail to start, the pod crash-loops holding the GPUs), `--port` moved the server off
the port the Service and the probes use, `--served-model-name` off the name the routes match.
Each has a field of the spec that the operator sizes, probes and routes by; the error names it."""

from __future__ import annotations

from collections.abc import Iterable

from .fields import SpecError

_GPUS = "set spec.gpu.count instead (tensor parallelism over the pod's GPUs; auto sizes it)"
_REPLICAS = "set spec.replicas or spec.autoscaling instead (one engine per pod)"
_SERVING = "set spec.serving instead"

OWNED: dict[str, str] = {
    "--tensor-parallel-size": _GPUS,
    "--pipeline-parallel-size": _GPUS,
    "--data-parallel-size": _REPLICAS,
    "--data-parallel-size-local": _REPLICAS,
    "--port": "set spec.serving.port instead",
    "--host": ("leave it out: the engine listens on every interface, for the Service and "
              "the probes"),
    "--served-model-name": "set spec.runtime.llm.servedModelName instead",
    "--name": "set spec.runtime.llm.servedModelName instead",
    "--max-model-len": "set spec.runtime.llm.maxModelLen instead",
    "--max-num-seqs": "set spec.runtime.llm.maxNumSeqs instead",
    "--dtype": "set spec.runtime.llm.dtype instead",
    "--gpu-memory-utilization": "set spec.runtime.llm.gpuMemoryUtilization instead",
    "--model": "set spec.model instead",
    "--model-uri": "set spec.model.uri instead",
    "--format": "set spec.model.format instead",
    "--api-keys-dir": _SERVING,
    "--tls-dir": _SERVING,
    "--metrics-port": _SERVING,
}
# vLLM's short forms
SHORT = {"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size",
         "-dp": "--data-parallel-size", "-dpl": "--data-parallel-size-local"}


def flag_name(arg: str) -> str | None:
    """The long flag `arg` sets, as both engines read it (`--a_b=1` is `--a-b`); None for a
    value or a short flag they do not own."""
    name = arg.split("=", 1)[0]
    if name.startswith("--"):
        return "--" + name[2:].replace("_", "-")
    return SHORT.get(name)


def check_owned_flags(args: Iterable[str], where: str) -> None:
    """SpecError naming the first flag in `args` that the spec owns, and the field to set."""
    for i, arg in enumerate(args):
        name = flag_name(arg)
        if name in OWNED:
            raise SpecError(f"{where}[{i}]", f"{arg.split('=', 1)[0]} is rendered from the "
                            f"spec: {OWNED[name]}")
