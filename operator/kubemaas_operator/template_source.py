"""Where a ModelDeployment's pod template comes from: the built-in one, or one the cluster
administrator keeps in the templates ConfigMap (read through the operator's Memory, which holds
it for templates_ttl_s)."""

from __future__ import annotations

from .config import Settings
from .k8s import ApiError, AsyncCluster
from .memory import Memory
from .render import BUILTIN_TEMPLATE
from .writes import Retry


async def template_source(settings: Settings, cluster: AsyncCluster, memory: Memory,
                          name: str) -> str | None:
    """The administrator's template source, or None for the built-in one."""
    if name == BUILTIN_TEMPLATE:
        return None
    key = f"{settings.namespace}/{settings.templates_configmap}"
    hit, data = memory.templates(key, settings.templates_ttl_s)
    if not hit:
        try:
            cm = await cluster.get_configmap(settings.namespace, settings.templates_configmap)
        except ApiError as err:
            raise Retry(f"cannot read the templates ConfigMap {key}: {err}") from err
        data = dict((cm or {}).get("data") or {}) if cm is not None else None
        memory.cache_templates(key, data)
    if data is None:
        raise LookupError(f"template {name!r} not found: the templates ConfigMap {key} does not "
                          f"exist; use template \"default\" or ask the cluster administrator")
    if name not in data:
        known = ", ".join(sorted(["default", *data])) or "default"
        raise LookupError(f"template {name!r} not found in the ConfigMap {key}; known: {known}")
    return data[name]
