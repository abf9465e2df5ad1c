"""PURE: the runtime container of a language model (format hf), from its engine's contract
(engines.py): the engine's image, command, arguments and variables, probes whose startup budget
grows with the model's size (sizing.py), the llm-d engine-type label, and what vLLM needs
besides (a /dev/shm for its tensor-parallel workers, a non-root user, a writable HOME)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .. import engines
from ..api import DEFAULT_GPU_MEMORY_UTILIZATION, ModelDeploymentSpec
from ..sizing import startup_budget_s

if TYPE_CHECKING:
    from . import DeploymentParams, RenderContext

SHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}


def served_model_name(spec: ModelDeploymentSpec, name: str) -> str:
    llm = spec.runtime.llm
    return (llm.served_model_name if llm and llm.served_model_name else None) or (
        spec.model.name or name)


def _settings(spec: ModelDeploymentSpec, name: str) -> dict[str, Any]:
    """The LLM settings by the engines' common names (engines.LLM_SETTINGS)."""
    llm = spec.runtime.llm
    gpus = spec.gpu.count if spec.gpu is not None else None
    util = llm.gpu_memory_utilization if llm else None
    return {
        "served_model_name": served_model_name(spec, name),
        "tensor_parallel_size": gpus,
        "max_model_len": llm.max_model_len if llm else None,
        "max_num_seqs": llm.max_num_seqs if llm else None,
        "gpu_memory_utilization": util if util is not None or spec.engine == "kubemaas" else (
            DEFAULT_GPU_MEMORY_UTILIZATION),
        "dtype": (llm.dtype if llm and llm.dtype else None) or (
            "auto" if spec.engine == "vllm" else None),
        "port": spec.serving.port,
    }


def engine_params(params: DeploymentParams, spec: ModelDeploymentSpec,
                  ctx: RenderContext) -> DeploymentParams:
    """`params` as the engine of `spec` runs: unchanged for tensor models."""
    if spec.model.format != "hf":
        return params
    engine = engines.engine_for(spec.engine, spec.model.format)
    settings = _settings(spec, ctx.name)
    extra = list(spec.runtime.llm.extra_args) if spec.runtime.llm else []
    budget = startup_budget_s(spec, ctx.model_record)
    labels = {**params.pod_labels, engines.ENGINE_LABEL: engine.name}
    if engine.engine_type:
        labels[engines.ENGINE_TYPE_LABEL] = engine.engine_type
    params = dataclasses.replace(params, command=list(engine.command),
                                 probes=engines.probes(engine, budget), pod_labels=labels,
                                 engine=engine.name)
    if engine is engines.VLLM:
        directory = params.model_uri.removeprefix("file://")
        user_env = [{"name": e.name, "value": e.value} for e in spec.runtime.env]
        return dataclasses.replace(
            params, image=spec.runtime.image or ctx.vllm_image,
            args=[directory, *engines.flag_args(engine, settings), *extra,
                  *spec.runtime.args],
            env=[{"name": "HOME", "value": f"{_cache_dir(params)}/home"},
                 {"name": "HF_HUB_OFFLINE", "value": "1"}, *user_env],
            volumes=[*params.volumes, SHM_VOLUME], volume_mounts=[*params.volume_mounts,
                                                                  SHM_MOUNT],
            run_as_user=engine.run_as_user, model_format="hf")
    ours = engines.env_vars(engine, settings)
    env = [{"name": e["name"], "value": ours.pop(e["name"], e["value"])} for e in params.env]
    cut = len(env) - len(spec.runtime.env)  # the engine's settings before the user's own
    env = [*env[:cut], *({"name": k, "value": v} for k, v in ours.items()), *env[cut:]]
    return dataclasses.replace(params, env=env, args=[*params.args, *extra])


def check_engine(manifest: dict[str, Any], params: DeploymentParams, what: str) -> None:
    """A language model's container must run the engine's command (an administrator's template
    that hard-codes the kubemaas runtime's would start the wrong program in a vLLM image)."""
    if params.model_format != "hf":
        return
    from . import RenderError

    containers = manifest["spec"]["template"].get("spec", {}).get("containers") or []
    if not any(isinstance(c, dict) and c.get("command") == params.command for c in containers):
        raise RenderError(f"{what} must render the engine's command {params.command} (use "
                          f"p.command, and p.probes for its probes): model format hf runs on "
                          f"engine {params.engine}")


def _cache_dir(params: DeploymentParams) -> str:
    return str(next(m["mountPath"] for m in params.volume_mounts
                    if m["name"] == "model-cache"))
