"""README's promises that a file can check: the two commands at the top (the second is what CI
runs), kwok's simulated pods said plainly, and the links to what it points at."""

from __future__ import annotations

import re

from .helm import ROOT


def test_readme_top_has_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```\n(.*?)```", text, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["hack/demo", "hack/test"]
    assert (ROOT / "hack" / "demo").stat().st_mode & 0o111
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "hack/test", "CI must run README's test command"
    assert "pods are simulated by [kwok]" in text
    for link in re.findall(r"\]\(((?:docs|examples|charts)/[^)#]+)\)", text):
        assert (ROOT / link).exists(), link
    assert "(docs/api.md)" in text
