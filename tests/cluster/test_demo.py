"""README's first command, `hack/demo`, stays green: it brings up its own control plane,
installs the chart, applies the examples, shows them Ready and answers an inference, ends with
a streamed chat from a language model on the real node when one can run here, then stops
everything it started."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_hack_demo(tmp_path: Path) -> None:
    from kubemaas_testbed.real_llm import unavailable

    state = tmp_path / "demo"
    # With a real node: its images may be rebuilt first (minutes after a change to the sources).
    no_real_node = unavailable()
    result = subprocess.run([str(ROOT / "hack" / "demo")], capture_output=True, text=True,
                            env={**os.environ, "KUBEMAAS_DEMO_STATE": str(state)},
                            timeout=300 if no_real_node else 900)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    table = out.split("kubectl get md", 1)[1]
    for name in ("plus-one", "resnet-cpu", "llm-h100", "bert-mig", "vit-2gpu", "ranker",
                 "plus-one-pinned", "llama-8b"):
        assert name in table
    assert '"data": [2.0, 3.0, 4.0, 5.0]' in out
    if no_real_node:
        assert "the chat on a real node is skipped" in out
    else:
        assert "[finish_reason: " in out, out[-6000:]
    assert not (state / "cluster").exists(), "hack/demo left its control plane behind"
    assert not (state / "operator.pid").exists(), "hack/demo left its operator running"
