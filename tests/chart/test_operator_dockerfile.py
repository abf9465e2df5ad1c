"""operator/Dockerfile stays in step with the tree and the chart (no Docker daemon here to
build it): every COPY source exists, it installs only the operator's extra, runs as the
non-root uid the chart's securityContext names, and exposes the health port the probes use."""

from __future__ import annotations

import json
import re

import yaml

from .helm import CHART, ROOT, find, objects, template

DOCKERFILE = ROOT / "operator" / "Dockerfile"


def test_dockerfile_matches_the_tree_and_the_chart() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]
    copies = [line.split()[1:-1] for line in lines
              if line.startswith("COPY ") and "--from=" not in line]
    assert copies
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} is not in the repository"
    # the operator's locked requirements, with hashes, before any source is copied
    assert "COPY requirements/build.txt requirements/operator.txt /tmp/requirements/" in text
    lock_install = text.index("-r /tmp/requirements/operator.txt")
    assert "--require-hashes --no-deps" in text[:lock_install]
    assert lock_install < min(text.index(f"COPY {tree} ") for tree in ("runtime", "operator"))
    for label in ("version", "revision", "source"):
        assert re.search(rf'org\.opencontainers\.image\.{label}="\$\{{', text), label
    user = [line.split()[1] for line in lines if line.startswith("USER ")][-1]
    entry = next(line for line in lines if line.startswith("ENTRYPOINT "))
    assert json.loads(entry[len("ENTRYPOINT "):]) == ["python", "-m", "kubemaas_operator"]
    assert (ROOT / "operator" / "kubemaas_operator" / "__main__.py").is_file()

    pod = find(objects(template()), "Deployment")["spec"]["template"]["spec"]
    assert user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert re.search(rf"^EXPOSE {values['operator']['healthPort']}$", text, re.M)
    assert re.search(rf"^EXPOSE {values['operator']['metricsPort']}$", text, re.M)
    assert values["image"]["repository"] == "ghcr.io/kubemaas/operator"
