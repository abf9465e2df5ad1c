"""The serving port's security and connection settings: API keys, TLS, the metrics port, rate
limits, connection timeouts (docs/security.md; security/ serves them)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .setting_values import Option, _bool, _optional_int, _optional_str

SECURITY_OPTIONS: tuple[Option, ...] = (
    Option("api_keys_dir", "--api-keys-dir", "KUBEMAAS_API_KEYS_DIR", None, _optional_str,
           "Directory of a mounted Secret of API keys: one file per key, the file name is the "
           "key's name in logs and metrics. Requests then need Authorization: Bearer KEY or "
           "x-api-key: KEY (health probes excepted); changes are picked up within a second. "
           "Default: no keys needed (docs/security.md)."),
    Option("tls_dir", "--tls-dir", "KUBEMAAS_TLS_DIR", None, _optional_str,
           "Directory of a mounted kubernetes.io/tls Secret (tls.crt, tls.key): serve HTTPS, "
           "re-reading the pair when it changes. Default: plain HTTP."),
    Option("metrics_port", "--metrics-port", "KUBEMAAS_METRICS_PORT", None, _optional_int,
           "Also serve GET /metrics, without a key, on this port (plain HTTP). Default: "
           "/metrics only on the serving port, behind the API key when keys are on."),
    Option("metrics_without_key", "--metrics-without-key", "KUBEMAAS_METRICS_WITHOUT_KEY",
           False, _bool,
           "Serve GET /metrics on the serving port without a key when keys are on, as vLLM does "
           "(an InferencePool's endpoint picker scrapes that port and sends no key). Default: "
           "behind the key.", nargs="?", const="true"),
    Option("rate_limit_rps", "--rate-limit-rps", "KUBEMAAS_RATE_LIMIT_RPS", 0.0, float,
           "Requests per second allowed to each API key (or to all callers together without "
           "keys); over it gets 429 + Retry-After. 0 = no limit."),
    Option("rate_limit_burst", "--rate-limit-burst", "KUBEMAAS_RATE_LIMIT_BURST", 0.0, float,
           "Requests a key may make at once above its per-second rate: 0 = max(1, rate), else at "
           "least 1."),
    Option("rate_limit_tpm", "--rate-limit-tpm", "KUBEMAAS_RATE_LIMIT_TPM", 0, int,
           "hf models: prompt + completion tokens per minute allowed to each API key; a key "
           "over it gets 429 + Retry-After until it is paid back. 0 = no limit."),
    Option("header_timeout_s", "--header-timeout-s", "KUBEMAAS_HEADER_TIMEOUT_S", 10.0, float,
           "A request whose headers are not complete this long after its first byte is cut off "
           "(slow headers); a request body must arrive at 1 KiB/s or more over each such "
           "window."),
    Option("idle_timeout_s", "--idle-timeout-s", "KUBEMAAS_IDLE_TIMEOUT_S", 300.0, float,
           "A connection without a request for this long (idle keep-alive, or one that never "
           "sends anything) is closed. Keep it above the idle timeout of the proxy in front."),
)


def check_security(values: dict[str, Any], check: Callable[[str, bool, str], None]) -> None:
    check("metrics_port", values["metrics_port"] is None or 0 <= values["metrics_port"] <= 65535,
          "must be between 0 and 65535")
    check("rate_limit_rps", 0 <= values["rate_limit_rps"] < math.inf,
          "must be 0 (no limit) or a finite number of requests per second")
    check("rate_limit_burst", values["rate_limit_burst"] == 0 or
          1 <= values["rate_limit_burst"] < math.inf,
          "must be 0 (max(1, --rate-limit-rps)) or a finite number of requests, at least 1")
    check("rate_limit_tpm", values["rate_limit_tpm"] >= 0, "must be 0 or more")
    check("header_timeout_s", 0 < values["header_timeout_s"] <= 600, "must be in (0, 600] s")
    check("idle_timeout_s", 0 < values["idle_timeout_s"] <= 86400, "must be in (0, 86400] s")
