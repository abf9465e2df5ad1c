"""PURE: the engine flags a language model's spec owns, refused in `spec.runtime.llm.extraArgs`
and `spec.runtime.args`.

Both lists are appended after the flags the operator renders, and both engines' parsers keep the
last value: `--tensor-parallel-size 4` there ran vLLM on four GPUs in a pod that asked for two
(its workers fail to start, the pod crash-loops holding the GPUs), `--port` moved the server off
the port the Service and the probes use, `--served-model-name` off the name the routes match.
Each has a field of the spec that the operator sizes, probes and routes by; the error names it.
Both parsers also take an unambiguous prefix for the whole flag (argparse's abbreviations:
`--tensor-parallel 4` is `--tensor-parallel-size 4`), so a prefix of an owned flag is refused
too: it either sets that flag or is ambiguous, which the engine refuses at start."""

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


def owned_by(name: str | None) -> list[str]:
    """The owned flags `name` sets: itself, or those it is a prefix of (an abbreviation)."""
    if name is None or len(name) <= 2:  # a value, or "--" (the end of the options)
        return []
    if name in OWNED:
        return [name]
    return [flag for flag in OWNED if flag.startswith(name)]


def check_owned_flags(args: Iterable[str], where: str) -> None:
    """SpecError naming the first flag in `args` that the spec owns, and the field to set."""
    for i, arg in enumerate(args):
        given = arg.split("=", 1)[0]
        owned = owned_by(flag_name(arg))
        if not owned:
            continue
        if owned == [flag_name(arg)]:
            raise SpecError(f"{where}[{i}]", f"{given} is rendered from the spec: "
                            f"{OWNED[owned[0]]}")
        fields = "; ".join(dict.fromkeys(OWNED[flag] for flag in owned))
        raise SpecError(f"{where}[{i}]", f"{given} abbreviates {' or '.join(owned)}, rendered "
                        f"from the spec: {fields}")
