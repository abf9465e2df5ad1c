"""Build the torchvision resnet18 test models (random weights, nothing downloaded).

Run as a script in its own process (the runtime tests call it once and cache the result), so that
torch's deprecation warnings about the exporters it still offers stay out of pytest's
warnings-are-errors run:

    python tests/runtime/make_models.py OUT_DIR [small]

Writes resnet18.onnx (dynamic batch axis), resnet18.pt (TorchScript with kubemaas.json metadata),
resnet18.pt2 (torch.export, dynamic batch), and reference input.npy / expected.npy computed by the
eager torch model.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    example = torch.randn(2, 3, 224, 224)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 224, 224), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.save(out / "input.npy", x)
    np.save(out / "expected.npy", expected)
    with warnings.catch_warnings():
        # the TorchScript-based ONNX exporter and torch.jit.trace are deprecated but still the
        # way to get these formats without onnxscript; the warnings are expected here
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(out / "resnet18.onnx"), input_names=["input"],
                          output_names=["logits"], dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        traced = torch.jit.trace(model, example)
        meta = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
                "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, 1000]}]}
        torch.jit.save(traced, str(out / "resnet18.pt"),
                       _extra_files={"kubemaas.json": json.dumps(meta)})
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
        torch.export.save(program, str(out / "resnet18.pt2"))
    (out / "done").write_text("ok")


class AddMul(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, a * b


def small(out: Path) -> None:
    """addmul.pt: a scripted two-input, two-output module saved without kubemaas.json."""
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.* deprecation: expected here
        torch.jit.save(torch.jit.script(AddMul()), str(out / "addmul.pt"))
    (out / "done").write_text("ok")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "small":
        small(Path(sys.argv[1]))
    else:
        main(Path(sys.argv[1]))
