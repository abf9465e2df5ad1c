"""The LoRA settings of hf models, as vLLM names them (docs/llm.md, "LoRA adapters")."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from .setting_values import Option, _bool

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")


def parse_lora_modules(text: str) -> tuple[tuple[str, str], ...]:
    """``name=path`` items (separated by spaces, commas or lines) or vLLM's JSON items, one per
    line (one per word of the flag): ``{"name": ..., "path": ..., "base_model_name": ...}``
    -> ((name, path), ...)."""
    modules = []
    for line in text.splitlines():
        if line.strip().startswith("{"):
            modules.append(_json_module(line))
            continue
        for item in line.replace(",", " ").split():
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"{item!r} is not NAME=PATH (an adapter's name and its "
                                 "directory or URI)")
            modules.append((name, path))
    return tuple(modules)


def _json_module(line: str) -> tuple[str, str]:
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"{line.strip()!r} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or \
            not isinstance(doc.get("path"), str) or set(doc) - {"name", "path",
                                                                "base_model_name"}:
        raise ValueError(f"{line.strip()!r}: a JSON adapter is {{\"name\": ..., \"path\": "
                         "..., \"base_model_name\": ...}")
    return doc["name"], doc["path"]


LORA_OPTIONS: tuple[Option, ...] = (
    Option("enable_lora", "--enable-lora", "KUBEMAAS_ENABLE_LORA", False, _bool,
           "hf models: serve LoRA adapters beside the base model (a request names one as its "
           "model); on with --lora-modules.", nargs="?", const="true"),
    Option("lora_modules", "--lora-modules", "KUBEMAAS_LORA_MODULES", (), parse_lora_modules,
           "hf models: the adapters served from the start, NAME=PATH ... or vLLM's JSON items "
           "{\"name\": ..., \"path\": ...} (PEFT directories: "
           "adapter_config.json, adapter_model.safetensors; a path, s3:// or http(s):// as for "
           "the model).", nargs="+"),
    Option("max_loras", "--max-loras", "KUBEMAAS_MAX_LORAS", 1, int,
           "hf models with LoRA: adapters in one batch at most (requests of others wait)."),
    Option("max_lora_rank", "--max-lora-rank", "KUBEMAAS_MAX_LORA_RANK", 16, int,
           "hf models with LoRA: the highest adapter rank accepted."),
    Option("allow_runtime_lora_updating", "--allow-runtime-lora-updating",
           "KUBEMAAS_ALLOW_RUNTIME_LORA_UPDATING", False, _bool,
           "hf models with LoRA: POST /v1/load_lora_adapter and /v1/unload_lora_adapter load "
           "and unload adapters while serving (vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING).",
           nargs="?", const="true"),
)


def check_lora(values: dict[str, Any], check: Callable[[str, bool, str], None]) -> None:
    """Adapter names unique, none the model's own; the limits in range."""
    modules = values["lora_modules"]
    if modules:
        values["enable_lora"] = True
    names = [name for name, _ in modules]
    for name in names:
        check("lora_modules", bool(NAME_RE.match(name)),
              f"adapter name {name!r} must match {NAME_RE.pattern}")
        check("lora_modules", name != values["model_name"],
              f"adapter name {name!r} is the base model's name")
    check("lora_modules", len(set(names)) == len(names), "adapter names must differ")
    check("max_loras", 1 <= values["max_loras"] <= 256, "must be 1..256")
    check("max_lora_rank", 1 <= values["max_lora_rank"] <= 1024, "must be 1..1024")
    check("allow_runtime_lora_updating",
          values["enable_lora"] or not values["allow_runtime_lora_updating"],
          "needs --enable-lora")
