"""Size, latency (batch 1 and batch 8) and error of every spec.model.optimize option against the
original, for an MLP (ONNX and torch.export), resnet18 (random weights) and the tiny language
model, in one run of the optimize step itself.

    PYTHONPATH=runtime:hack:. .venv/bin/python bench/optimize/bench_optimize.py [--probe-rows 128]
        [--repeats 20] [--out bench/results/optimize-latest.json] [--plot docs/img/optimize.png]

Prints a Markdown table (docs/optimize.md holds the last one, with the machine's load). The
figures are what `python -m kubemaas_runtime.optimize` measures before serving: medians of
``--repeats`` calls on the same device (CPU here), probe rows from seed 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KUBEMAAS_TEST_CACHE", "/tmp/kubemaas-test-cache"))


def make_mlp(path: Path) -> None:
    """x FP32 [batch, 512] -> 1024 -> 1024 -> 10 class scores, ReLU, seeded weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    dims = [512, 1024, 1024, 10]
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"))
        inits.append(numpy_helper.from_array(np.full(b, 0.01, np.float32), f"b{i}"))
        out = "scores" if i == len(dims) - 2 else f"h{i}"
        nodes += [helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [out if out == "scores"
                                                                else f"a{i}"])]
        if out != "scores":
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", 512])], [helper.make_tensor_value_info(
            "scores", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def resnet18_dir() -> Path:
    from importlib.metadata import version

    out = CACHE / f"resnet18-torch{version('torch')}-tv{version('torchvision')}"
    if not (out / "done").is_file():
        subprocess.run([sys.executable, str(ROOT / "tests/runtime/make_models.py"), str(out)],
                       check=True, timeout=600)
    return out


def make_torch_mlp(path: Path) -> None:
    """The same shape as make_mlp, in torch (seed 7), saved with torch.export (dynamic batch)."""
    import torch

    torch.manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(),
                              torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                              torch.nn.Linear(1024, 10)).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(net, (torch.randn(2, 512),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def cases(work: Path) -> list[tuple[str, Path, dict[str, str]]]:
    mlp = work / "mlp.onnx"
    make_mlp(mlp)
    r = resnet18_dir()
    out: list[tuple[str, Path, dict[str, str]]] = []
    for model, path in (("mlp (onnx)", mlp), ("resnet18 (onnx)", r / "resnet18.onnx")):
        out += [(model, path, {"quantize": q}) for q in ("int8-dynamic", "int8-static", "fp16")]
    for model, path in (("resnet18 (torchscript)", r / "resnet18.pt"),
                        ("resnet18 (torch.export)", r / "resnet18.pt2")):
        out += [(model, path, {"convert": "onnx"}),
                (model, path, {"convert": "onnx", "quantize": "int8-static"}),
                (model, path, {"quantize": "bf16"})]
    tmlp = work / "mlp.pt2"
    make_torch_mlp(tmlp)
    out += [("mlp (torch.export)", tmlp, {"quantize": q}) for q in ("int8-weight-only", "bf16")]
    from kubemaas_testbed.llm_models import build_llm

    llm = build_llm(work / "tiny-llama", family="llama")
    out += [("tiny llama (hf)", llm, {"quantize": q}) for q in ("int8-weight-only", "bf16")]
    return out


HEADER = ("| model | option | size MB | latency ms b=1 / b=8 (speed-up) | max rel error "
          "| top-1 (token) agreement | serves |\n|---|---|---|---|---|---|---|")


def row(model: str, opts: dict[str, str], rep: dict[str, Any]) -> str:
    option = " + ".join(f"{k} {v}" for k, v in sorted(opts.items(), reverse=True))
    if "latencyMs" not in rep:
        return f"| {model} | {option} | - | - | - | - | {rep['serving']}: {rep['reason']} |"
    size = rep["sizeBytes"]
    lo, lq = rep["latencyMs"]["original"], rep["latencyMs"]["optimized"]
    (errs,) = rep["errors"].values()
    lat = " / ".join(f"{lo[k]:.3g} → {lq[k]:.3g} (x{lo[k] / lq[k]:.2f})" for k in sorted(lo))
    top1 = (f"{errs['top1Agreement'] * 100:.1f} %" if "top1Agreement" in errs else
            f"({errs['tokenAgreement'] * 100:.1f} %)" if "tokenAgreement" in errs else "-")
    rel = f"{errs['maxRelError']:.2g}" if "maxRelError" in errs else "-"
    mb = 3 if size["original"] < 1e7 else 1
    return (f"| {model} | {option} | {size['original'] / 1e6:.{mb}f} → "
            f"{size['optimized'] / 1e6:.{mb}f}{' (in memory)' if 'sizeOf' in rep else ''}"
            f" | {lat} | {rel} | {top1} | {rep['serving']} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probe-rows", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench/results/optimize-latest.json"))
    parser.add_argument("--table", metavar="JSON", help="print the table of a saved run")
    parser.add_argument("--plot", metavar="PNG", help="draw the run's figures (plot.py)")
    args = parser.parse_args()
    if args.table:
        doc = json.loads(Path(args.table).read_text())
        print(HEADER)
        for r in doc["results"]:
            print(row(r["model"], r["options"], r["report"]))
        if args.plot:
            plot(Path(args.table), Path(args.plot))
        return
    from kubemaas_runtime.optimize import Options, run

    results = []
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(HEADER)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (model, path, opts) in enumerate(cases(Path(tmp))):
            options = Options(quantize=opts.get("quantize"), convert=opts.get("convert"),
                              probe_rows=args.probe_rows, max_batch_size=8,
                              repeats=args.repeats)
            rep = run(str(path), Path(tmp) / f"out{i}", options)
            results.append({"model": model, "options": opts, "report": rep})
            print(row(model, opts, rep), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"loadStart": load_start, "loadEnd": os.getloadavg(),
                               "started": started, "probeRows": args.probe_rows,
                               "repeats": args.repeats, "results": results}, indent=1))
    if args.plot:
        plot(out, Path(args.plot))


def plot(results: Path, png: Path) -> None:
    """plot.py in the cached plot venv (bench/runtime/venvs.py: matplotlib stays out of ours)."""
    sys.path.insert(0, str(ROOT / "bench" / "runtime"))
    import venvs

    v = venvs.ensure_venv("plot", venvs.TOOLS["plot"])
    if v.error:
        raise SystemExit(f"plot venv: {v.error}")
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(v.python), str(Path(__file__).with_name("plot.py")), str(results),
                    str(png)], check=True, timeout=300)


if __name__ == "__main__":
    main()
