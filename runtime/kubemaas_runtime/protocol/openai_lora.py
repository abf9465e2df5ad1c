"""LoRA adapters on the OpenAI surface, as vLLM serves them: each adapter is a model of its own
in ``/v1/models`` (its ``parent`` the base model, its ``root`` where it came from), a request
names it as its ``model``, and with runtime updating allowed ``POST /v1/load_lora_adapter``
(``{"lora_name", "lora_path", "load_inplace"}``) and ``POST /v1/unload_lora_adapter``
(``{"lora_name"}``) change the set while serving: the Gateway API Inference Extension's LoRA
syncer drives these two. Answers are vLLM's: a plain-text ``Success: ...`` or an OpenAI error.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..llm.lora import AdapterError, LoraSet, read_adapter
from ..settings_lora import NAME_RE
from .openai_errors import ApiError

log = logging.getLogger("kubemaas.runtime.llm")

ROUTES = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")


def shown_uri(uri: str) -> str:
    """Where a model came from, as a model card's ``root`` shows it: a URL loses its userinfo,
    query and fragment (a presigned URL's signature, a token), a path stays as it is."""
    parts = urllib.parse.urlsplit(uri)
    if "://" not in uri or not parts.scheme:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def adapter_cards(loras: LoraSet | None, base: str, created: int, max_model_len: int
                  ) -> list[dict[str, Any]]:
    if loras is None:
        return []
    return [{"id": a.name, "object": "model", "created": created, "owned_by": "kubemaas",
             "root": shown_uri(a.path), "parent": base, "max_model_len": max_model_len}
            for a in list(loras.by_name.values())]


def adapter_id(loras: LoraSet | None, name: str) -> int | None:
    """The id of the adapter of that name; None when there is none."""
    adapter = loras.by_name.get(name) if loras is not None else None
    return adapter.id if adapter is not None else None


def _field(doc: Any, key: str) -> str:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"'{key}' must be a non-empty string", key)
    return value


async def load(loras: LoraSet, doc: Any, fetch: Callable[[str], Path],
               base: str) -> web.Response:
    if not isinstance(doc, dict) or "lora_name" not in doc or "lora_path" not in doc:
        raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.")
    name, uri = _field(doc, "lora_name"), _field(doc, "lora_path")
    inplace = doc.get("load_inplace", False)
    if not isinstance(inplace, bool):
        raise ApiError(400, "'load_inplace' must be a boolean", "load_inplace")
    if not NAME_RE.match(name):
        raise ApiError(400, f"'lora_name' must match {NAME_RE.pattern}", "lora_name")
    if name == base:
        raise ApiError(400, f"'{name}' is the base model's name", "lora_name")
    if name in loras.by_name and not inplace:
        raise ApiError(400, f"The lora adapter '{name}' has already been loaded. Unload it "
                       "first, or send load_inplace: true to replace it.", "lora_name")
    loop = asyncio.get_running_loop()
    try:
        adapter = await loop.run_in_executor(None, read_adapter, loras, name, uri, fetch)
        if inplace and name in loras.by_name:  # later requests get the new weights
            loras.remove(name)
        loras.add(adapter)
    except AdapterError as exc:
        raise ApiError(400, f"cannot load LoRA adapter '{name}': {exc}", "lora_path") from None
    log.info("LoRA adapter loaded", extra={"fields": {
        "adapter": name, "path": uri, "rank": adapter.rank, "layers": len(adapter.pairs)}})
    return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")


def unload(loras: LoraSet, doc: Any) -> web.Response:
    if not isinstance(doc, dict) or "lora_name" not in doc:
        raise ApiError(400, "'lora_name' must be provided.")
    name = _field(doc, "lora_name")
    try:
        loras.remove(name)
    except KeyError:
        raise ApiError(404, f"The lora adapter '{name}' cannot be found.", "lora_name",
                       "model_not_found") from None
    log.info("LoRA adapter unloaded", extra={"fields": {"adapter": name}})
    return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")
