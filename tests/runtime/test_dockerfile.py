"""runtime/Dockerfile stays in step with the tree (tests/cluster/test_images.py builds and runs
it): every COPY source exists for every variant, the image runs as a non-root user, its
entrypoint is the runtime's module, the lock is installed before the sources, labels are set."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "runtime" / "Dockerfile"
# requirements/<VARIANT>.txt, written by hack/lock
VARIANTS = ("runtime", "runtime-torch", "runtime-keras", "runtime-llm")


def test_dockerfile_matches_the_tree() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]
    copies = [line.split()[1:-1] for line in lines
              if line.startswith("COPY ") and "--from=" not in line]
    assert copies, "no COPY in the Dockerfile"
    for sources in copies:
        for source in sources:
            for variant in VARIANTS:
                path = source.replace("${VARIANT}", variant)
                assert (REPO / path).exists(), f"COPY source {path} is not in the repository"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    entry = next(line for line in lines if line.startswith("ENTRYPOINT "))
    assert json.loads(entry[len("ENTRYPOINT "):]) == ["python", "-m", "kubemaas_runtime"]
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    assert (REPO / "runtime" / "kubemaas_runtime" / "__main__.py").is_file()


def test_dependencies_come_from_the_lock_before_the_sources() -> None:
    """The locked requirements are installed (with hashes, without resolving) in a layer before
    any source is copied, so a source edit rebuilds only the last layers (docs/images.md)."""
    text = DOCKERFILE.read_text()
    script = (REPO / "runtime" / "install-locked.sh").read_text()
    assert "--require-hashes --no-deps" in script
    assert '-r "$req/build.txt"' in script and '"$req/$VARIANT.txt" >"$req/part.txt"' in script
    install = r"^RUN VARIANT=\$\{VARIANT\} /tmp/requirements/install-locked\.sh "
    installs = [m.start() for m in re.finditer(install, text, re.M)]
    assert len(installs) == 3, "the lock comes in three layers (runtime/install-locked.sh)"
    assert re.search(r"install-locked\.sh ''", text), "the last layer installs the whole lock"
    first_source = min(text.index(f"COPY {tree} ") for tree in ("runtime", "operator", "hack"))
    assert max(installs) < first_source
    assert re.search(r"^ARG VARIANT=runtime$", text, re.M)
    for label in ("version", "revision", "source"):
        assert re.search(rf'org\.opencontainers\.image\.{label}="\$\{{', text), label


def test_converter_dockerfile_matches_the_tree() -> None:
    """runtime/Dockerfile.tfconvert (built by hand): its COPY sources exist, it runs as the
    runtime's non-root user, and its entrypoint is the converter the init container runs."""
    text = (REPO / "runtime" / "Dockerfile.tfconvert").read_text()
    lines = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"COPY source {source} is not in the repository"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users == ["10001:10001"]
    entry = next(line for line in lines if line.startswith("ENTRYPOINT "))
    assert json.loads(entry[len("ENTRYPOINT "):]) == ["python", "-m", "kubemaas_runtime.tfconvert"]
    assert (REPO / "runtime" / "kubemaas_runtime" / "tfconvert.py").is_file()
