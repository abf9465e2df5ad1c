"""Settings: flags over KUBEMAAS_* variables over defaults, validated with clear messages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.settings import OPTIONS, load_settings
from tests.helpers import wait_for


def test_env_then_flags_then_defaults() -> None:
    env = {"KUBEMAAS_MODEL_URI": "s3://b/m.onnx", "KUBEMAAS_PORT": "9000",
           "KUBEMAAS_MAX_BATCH_SIZE": "8", "KUBEMAAS_WARMUP": "false"}
    s = load_settings(["--port", "9100"], env)
    assert (s.model_uri, s.model_format, s.port, s.max_batch_size, s.warmup) == (
        "s3://b/m.onnx", "onnx", 9100, 8, False)
    assert s.model_name == "model" and s.host == "0.0.0.0" and s.cache_dir
    assert load_settings(["--model-uri", "m.pt2"], {}).model_format == "torch-export"
    assert load_settings(["--model-uri", "m.pt"], {}).model_format == "torchscript"
    assert load_settings(["--model-uri", "m", "--format", "onnx"], {}).model_format == "onnx"


@pytest.mark.parametrize(("argv", "env", "message"), [
    ([], {}, "--model-uri / KUBEMAAS_MODEL_URI: the model URI is required"),
    (["--model-uri", "m.bin"], {}, "cannot tell the format"),
    (["--model-uri", "m.onnx", "--format", "tf"], {}, "is not one of"),
    (["--model-uri", "m.onnx"], {"KUBEMAAS_PORT": "http"}, "KUBEMAAS_PORT: cannot parse"),
    (["--model-uri", "m.onnx", "--port", "70000"], {}, "between 0 and 65535"),
    (["--model-uri", "m.onnx", "--model-sha256", "abc"], {}, "64 hexadecimal"),
    (["--model-uri", "m.onnx", "--name", "a/b"], {}, "--name / KUBEMAAS_MODEL_NAME"),
    (["--model-uri", "m.onnx", "--device", "tpu"], {}, "auto, cpu, cuda"),
    (["--model-uri", "m.onnx", "--pad-batches", "sometimes"], {}, "auto, always, never"),
    (["--model-uri", "m.onnx"], {"KUBEMAAS_WARMUP": "maybe"}, "true or false"),
    # a bucket smaller than one request refused every request forever, Retry-After: 1
    (["--model-uri", "m.onnx", "--rate-limit-rps", "10", "--rate-limit-burst", "0.5"], {},
     "--rate-limit-burst / KUBEMAAS_RATE_LIMIT_BURST: must be 0"),
    (["--model-uri", "m.onnx", "--rate-limit-burst", "inf"], {}, "--rate-limit-burst"),
    (["--model-uri", "m.onnx"], {"KUBEMAAS_RATE_LIMIT_RPS": "inf"}, "a finite number"),
])
def test_invalid_settings(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(StartupError, match="invalid setting") as info:
        load_settings(argv, env)
    assert message in str(info.value)


def test_lora_and_runner_settings_as_vllm_takes_them() -> None:
    hf = ["--model-uri", "/m", "--format", "hf"]
    s = load_settings([*hf, "--enable-lora", "--lora-modules", "sql=/a/sql",
                       '{"name": "chat", "path": "s3://b/chat", "base_model_name": "m"}',
                       "--max-loras", "2", "--runner", "generate"], {})
    assert (s.enable_lora, s.lora_modules, s.max_loras, s.runner) == (
        True, (("sql", "/a/sql"), ("chat", "s3://b/chat")), 2, "generate")
    s = load_settings(hf, {"KUBEMAAS_LORA_MODULES": "a=/x, b=/y"})
    assert s.enable_lora and s.lora_modules == (("a", "/x"), ("b", "/y"))  # implied
    assert not load_settings(hf, {}).enable_lora and load_settings(hf, {}).runner == "auto"
    for argv, message in [(["--lora-modules", "sql"], "is not NAME=PATH"),
                          (["--lora-modules", "a=/x", "a=/y"], "adapter names must differ"),
                          (["--lora-modules", "model=/x"], "the base model's name"),
                          (["--lora-modules", '{"name": "a"}'], "a JSON adapter is"),
                          (["--max-lora-rank", "0"], "1..1024"),
                          (["--allow-runtime-lora-updating"], "needs --enable-lora"),
                          (["--runner", "embed"], "auto, generate, pooling")]:
        with pytest.raises(StartupError, match="invalid setting") as info:
            load_settings([*hf, *argv], {})
        assert message in str(info.value), argv


def test_cors_settings_as_vllm_takes_them() -> None:
    onnx = ["--model-uri", "m.onnx"]
    s = load_settings([*onnx, "--allowed-origins", '["https://a.example", "http://b:8080"]',
                       "--allow-credentials", "--allowed-methods", '["POST"]'], {})
    assert (s.allowed_origins, s.allowed_methods, s.allowed_headers, s.allow_credentials) == (
        ("https://a.example", "http://b:8080"), ("POST",), ("*",), True)
    s = load_settings(onnx, {"KUBEMAAS_ALLOWED_ORIGINS": "*", "KUBEMAAS_ALLOWED_HEADERS":
                             "authorization, content-type"})
    assert (s.allowed_origins, s.allowed_headers) == (("*",), ("authorization", "content-type"))
    assert load_settings(onnx, {}).allowed_origins == ()  # off unless asked for
    for value, message in [("a.example", "is not an origin"),
                           ("https://a.example/", "an origin has no path"),
                           ('["https://a.example"', "is not a JSON list"),
                           ('[1]', "a JSON list of strings")]:
        with pytest.raises(StartupError, match="invalid setting") as info:
            load_settings([*onnx, "--allowed-origins", value], {})
        assert message in str(info.value), value


def test_every_option_has_a_kubemaas_variable() -> None:
    assert all(o.env.startswith("KUBEMAAS_") for o in OPTIONS)
    assert len({o.env for o in OPTIONS}) == len(OPTIONS)


def test_cli_help_never_imports_torch() -> None:
    # how fast --help answers is measured by bench/runtime/startup.py (target < 5 s)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "kubemaas_runtime",
                           "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "KUBEMAAS_MODEL_URI" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()}
    assert "torch" not in imported and "onnxruntime" not in imported


def test_serving_onnx_never_imports_torch(runtime_server: object, tiny_onnx: object) -> None:
    # start-up time and resident memory (targets < 5 s and 100 MB, docs/runtime.md) are
    # measured by bench/runtime/startup.py, not asserted under a test run's load
    from .conftest import Server

    server: Server = runtime_server(  # type: ignore[operator]
        ["--model-uri", str(tiny_onnx), "--device", "cpu"], env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.split("|")[-1].strip() for line in server.lines if "import time:" in line}
    assert "onnxruntime" in imported
    assert "torch" not in imported
    ready = wait_for(lambda: next((doc for doc in server.logs() if doc.get("msg") == "ready"),
                                  None), timeout=10, what="the runtime's ready log line")
    assert ready["model"] == "model" and ready["device"] == "cpu"
