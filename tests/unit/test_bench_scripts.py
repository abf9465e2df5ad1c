"""Rot in the benchmarks (bench/): a command the docs show beside a figure names only options its
script still has, and a GPU benchmark refuses to measure the CPU instead."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
SCRIPT = re.compile(r"(bench/[\w/]+\.py)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][-a-z0-9]*)")


def load(script: str) -> Any:
    """A bench script as a module of its own name (bench/llm and bench/runtime both have a
    gpu.py), with its folder on sys.path for its sibling imports."""
    path = ROOT / script
    sys.path.insert(0, str(path.parent))
    name = "bench_" + script.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def doc_commands() -> list[tuple[str, str, str]]:
    """(doc, script, the command's arguments) for each `bench/X.py ...` in a code span, an
    indented block or a fenced block of the docs; arguments stop at a comment or a shell
    separator."""
    found = []
    for doc in DOCS:
        text = doc.read_text().replace("\\\n", " ")
        spans = re.findall(r"`([^`]+)`", text, flags=re.S)
        lines = [ln for ln in text.splitlines()
                 if "bench/" in ln and not ln.lstrip().startswith("|")]
        for chunk in spans + lines:
            chunk = " ".join(chunk.split())
            for m in SCRIPT.finditer(chunk):
                rest = re.split(r"\s#|&&|\|\||;|\)|`", chunk[m.end():])[0]
                if SCRIPT.search(rest):
                    rest = rest[:SCRIPT.search(rest).start()]  # type: ignore[union-attr]
                found.append((doc.name, m.group(1), rest))
    return found


def script_options(script: Path) -> set[str]:
    """Every long option the script (or a module of its folder it builds its parser in) adds."""
    sources = [script.read_text()] + [p.read_text() for p in script.parent.glob("*args*.py")]
    return {opt for src in sources
            for opt in re.findall(r"add_argument\(\s*(?:\"-\w\",\s*)?\"(--[a-z][-a-z0-9]*)\"", src)}


def test_doc_commands_name_scripts_and_options_that_exist() -> None:
    commands = doc_commands()
    assert len(commands) > 50  # the docs' commands were found
    wrong = []
    for doc, script, rest in commands:
        path = ROOT / script
        if not path.exists():
            wrong.append(f"{doc}: {script} does not exist")
            continue
        unknown = set(OPTION.findall(rest)) - script_options(path) - {"--help"}
        if unknown:
            wrong.append(f"{doc}: {script} has no {sorted(unknown)} (`{script}{rest}`)")
    assert not wrong, "\n".join(wrong)


def test_the_option_check_sees_a_renamed_option() -> None:
    rollout = ROOT / "bench/rollout/bench_rollout.py"
    assert "--only-rollbacks" in script_options(rollout)
    assert "--only-rollback" not in script_options(rollout)
    assert "--concurrency" in script_options(ROOT / "bench/llm/run.py")  # from run_args.py


def test_ort_shape_change_refuses_to_time_the_cpu(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Without onnxruntime's CUDA provider a session falls back to the CPU with a warning: the
    script printed the CPU's figures under its CUDA configurations' names."""
    ort_shape_change = load("bench/runtime/ort_shape_change.py")

    def no_model(*args: object) -> None:
        raise AssertionError("the model was built: the script went on to measure")

    monkeypatch.setattr(ort_shape_change.ort, "get_available_providers",
                        lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(ort_shape_change.bench_models,
                        "ensure_model", no_model)
    monkeypatch.setattr(sys, "argv", ["ort_shape_change.py"])
    assert ort_shape_change.main() == 2
    assert "CUDAExecutionProvider" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["ort_shape_change.py", "--help"])
    assert ort_shape_change.main() == 0  # it used to run the benchmark
    assert "CUDA provider" in capsys.readouterr().out


def test_the_rollback_command_of_docs_rollouts_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench_rollout.py --only-rollbacks --nodes 2 --models 1` (docs/rollouts.md) was refused:
    'a size exceeds --models', for the default --sizes 1,10,100 that --only-rollbacks never runs."""
    bench_rollout = load("bench/rollout/bench_rollout.py")

    argv = ["bench_rollout.py", "--only-rollbacks", "--nodes", "2", "--models", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    args = bench_rollout._parse_args()
    assert args.only_rollbacks and args.models == 1 and args.nodes == 2
    monkeypatch.setattr(sys, "argv", argv[:1] + argv[2:])  # a run of the sizes still checks them
    with pytest.raises(SystemExit):
        bench_rollout._parse_args()


def test_the_runtime_gpu_check_stops_without_cuda(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """bench/runtime/gpu.py on a machine without CUDA built its models, then died in a traceback
    of torch.jit.load(map_location='cuda'); with --no-inprocess it would have served the CPU."""
    import torch

    runtime_gpu = load("bench/runtime/gpu.py")

    def no_model(*args: object) -> None:
        raise AssertionError("the model was built: the script went on to measure")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime_gpu.bench_models,
                        "ensure_model", no_model)
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--out", str(tmp_path)])
    assert runtime_gpu.main() == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_the_llm_gpu_check_stops_without_cuda(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """bench/llm/gpu.py without --smoke on a machine without CUDA built the 1B model (25 s,
    several GB on disk), then died in a CalledProcessError traceback of limit.py --device cuda."""
    import torch

    llm_gpu = load("bench/llm/gpu.py")

    def no_model(*args: object) -> None:
        raise AssertionError("the model was built: the script went on to measure")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(llm_gpu, "_prepare", no_model)
    assert llm_gpu.main(["--out", str(tmp_path)]) == 2
    assert "--smoke" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["bench/llm/envs.py", "bench/runtime/venvs.py"])
def test_venv_scripts_check_names_before_building(script: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`envs.py --help` and `venvs.py --help` died in a KeyError traceback ('--help' taken for a
    venv name), and `envs.py hf-serve typo` built hf-serve from PyPI before that KeyError."""
    module = load(script)

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a venv was built")

    monkeypatch.setattr(module, "ensure_venv", no_build)
    assert module.main(["--help"]) == 0
    assert "names:" in capsys.readouterr().out
    first = next(iter(getattr(module, "ENVS", None) or module.PEERS))
    assert module.main([first, "typo"]) == 2
    assert "unknown typo" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["bench/llm/gpu_plot.py", "bench/llm/pooling_plot.py"])
def test_plot_scripts_answer_help(script: str, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """They read '--help' as a JSON file's path: FileNotFoundError traceback."""
    module = load(script)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    assert module.main() == 0
    assert "docs/img/" in capsys.readouterr().out


def test_llm_benchmarks_remove_the_models_they_build() -> None:
    """embed.py, rerank.py and lora.py built their model in a mkdtemp directory and left it in
    /tmp after every run (760 MB for embed.py --size small). A script of bench/llm that makes a
    temporary directory removes it."""
    leaking = [p.name for p in sorted((ROOT / "bench" / "llm").glob("*.py"))
               if "mkdtemp(" in (text := p.read_text()) and "rmtree" not in text]
    assert not leaking


def test_llm_engine_choice_knows_its_variants(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`llm_engine_choice.py --help` (or a misspelt variant) built the model and timed the
    kubemaas engine, printed under the name '--help'."""
    module = load("bench/llm_engine_choice.py")

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built: the script went on to measure")

    monkeypatch.setattr(module, "build_llm", no_model)
    monkeypatch.setattr(sys, "argv", ["llm_engine_choice.py", "--help"])
    assert module.main() == 0
    assert "variants: generate-each" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["llm_engine_choice.py", "kubemass"])
    assert module.main() == 2
    assert "unknown kubemass" in capsys.readouterr().err
