"""docs/api.md is generated from the CRD's schema (hack/api-docs) and never drifts from it."""

from __future__ import annotations

import subprocess
import sys

from .helm import ROOT


def test_api_reference_is_generated_from_the_crd() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "api-docs"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = (ROOT / "docs" / "api.md").read_text()
    for field in ("`uri`", "`format`", "`sha256`", "`migProfile`", "`maxReplicas`",
                  "`readyReplicas`", "`conditions`"):
        assert field in text, field
