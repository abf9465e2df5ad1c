"""The cross-origin (CORS) settings, as vLLM names them (docs/security.md, "Browsers")."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .setting_values import Option, _bool


def parse_list(text: str) -> tuple[str, ...]:
    """vLLM's JSON list (``["https://a.example", "https://b.example"]``), or words separated
    by commas or spaces (easier in an environment variable)."""
    if text.strip().startswith("["):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a JSON list: {exc}") from None
        if not isinstance(doc, list) or not all(isinstance(v, str) and v for v in doc):
            raise ValueError(f"{text!r}: expected a JSON list of strings")
        return tuple(doc)
    return tuple(text.replace(",", " ").split())


CORS_OPTIONS: tuple[Option, ...] = (
    Option("allowed_origins", "--allowed-origins", "KUBEMAAS_ALLOWED_ORIGINS", (), parse_list,
           "Origins whose browser pages may call this server (CORS), as vLLM's flag takes "
           "them: a JSON list or words; [\"*\"] = any. Unset: no CORS headers, and a "
           "preflight (OPTIONS) is refused, so browsers on other origins are kept out (vLLM "
           "allows any origin by default)."),
    Option("allowed_methods", "--allowed-methods", "KUBEMAAS_ALLOWED_METHODS", ("*",),
           parse_list, "With --allowed-origins: the methods a cross-origin request may use; "
           "[\"*\"] = any."),
    Option("allowed_headers", "--allowed-headers", "KUBEMAAS_ALLOWED_HEADERS", ("*",),
           parse_list, "With --allowed-origins: the request headers a cross-origin request "
           "may send (Authorization for an API key among them); [\"*\"] = any."),
    Option("allow_credentials", "--allow-credentials", "KUBEMAAS_ALLOW_CREDENTIALS", False,
           _bool, "With --allowed-origins: let browsers send cookies and HTTP authentication "
           "with cross-origin requests (Access-Control-Allow-Credentials).",
           nargs="?", const="true"),
)


def check_cors(values: dict[str, Any], check: Callable[[str, bool, str], None]) -> None:
    for origin in values["allowed_origins"]:
        check("allowed_origins", origin == "*" or origin.startswith(("http://", "https://")),
              f"{origin!r} is not an origin (scheme://host[:port], or *)")
        check("allowed_origins", origin == "*" or origin.count("/") == 2,
              f"{origin!r}: an origin has no path (https://app.example, not "
              "https://app.example/)")
