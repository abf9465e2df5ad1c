"""Build a seeded torch MLP (x FP32 [batch, 32] -> 256 -> 256 -> 10, ReLU) as torch.export
(mlp.pt2, dynamic batch) and TorchScript (mlp.pt, with kubemaas.json metadata), with reference
input.npy / expected.npy from the eager model. Run as a script in its own process (torch's
deprecation warnings stay out of pytest's warnings-are-errors run):

    python tests/runtime/make_torch_mlp.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10)).eval()

    class Named(torch.nn.Module):  # the input is called x
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

    named = Named().eval()
    example = torch.randn(2, 32)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(named, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(out / "mlp.pt2"))
    meta = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 32]}],
            "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, 10]}]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(named)
        torch.jit.save(scripted, str(out / "mlp.pt"), _extra_files={"kubemaas.json":
                                                                     json.dumps(meta)})
    x = np.random.default_rng(21).standard_normal((4, 32)).astype(np.float32)
    with torch.inference_mode():
        np.save(out / "expected.npy", named(torch.from_numpy(x)).numpy())
    np.save(out / "input.npy", x)
    (out / "done").write_text("ok\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
