"""The lock agrees with pyproject.toml (docs/install.md).

uv.lock records the requirements it was resolved from; each requirements/*.txt (what
hack/install-python and the Dockerfiles install, with --require-hashes) is exported from it. A
dependency changed in pyproject.toml without `hack/lock`, or a lock changed without its exports,
fails here with the command to run. Pure file reading: no uv, no network.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
FIX = "run `hack/lock` and commit uv.lock and requirements/"
EXPORTS = sorted((ROOT / "requirements").glob("*.txt"))

Dep = tuple[str, tuple[str, ...], str, str]  # name, extras, specifier, extra/group


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def _packages() -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in _lock()["package"]}


def _dep(spec: str, where: str) -> Dep:
    req = Requirement(spec)
    assert req.marker is None, f"{spec}: markers in pyproject.toml are not compared yet"
    return (canonicalize_name(req.name), tuple(sorted(req.extras)),
            str(SpecifierSet(str(req.specifier))), where)


def _locked_dep(entry: dict[str, Any], where: str) -> Dep:
    return (canonicalize_name(entry["name"]), tuple(sorted(entry.get("extras", []))),
            str(SpecifierSet(entry.get("specifier", ""))), where)


def test_lock_was_resolved_from_this_pyproject() -> None:
    project = _pyproject()
    root = _packages()["kubemaas"]
    extras = project["project"]["optional-dependencies"]
    wanted = {_dep(spec, extra) for extra, specs in extras.items() for spec in specs}
    wanted |= {_dep(spec, "") for spec in project["project"]["dependencies"]}
    locked = set()
    for entry in root["metadata"]["requires-dist"]:
        marker = entry.get("marker", "")
        match = re.fullmatch(r"extra == '([\w-]+)'", marker)
        assert match or not marker, f"uv.lock: unexpected marker {marker!r}; {FIX}"
        locked.add(_locked_dep(entry, match.group(1) if match else ""))
    assert locked == wanted, (
        f"pyproject.toml and uv.lock disagree: only in pyproject.toml {sorted(wanted - locked)}, "
        f"only in uv.lock {sorted(locked - wanted)}; {FIX}")
    assert root["metadata"]["provides-extras"] == list(extras), FIX

    groups = project.get("dependency-groups", {})
    wanted_groups = {_dep(spec, group) for group, specs in groups.items() for spec in specs}
    locked_groups = {_locked_dep(entry, group) for group, entries
                     in root["metadata"].get("requires-dev", {}).items() for entry in entries}
    assert locked_groups == wanted_groups, (
        f"pyproject.toml's dependency-groups and uv.lock disagree: only in pyproject.toml "
        f"{sorted(wanted_groups - locked_groups)}, only in uv.lock "
        f"{sorted(locked_groups - wanted_groups)}; {FIX}")


def test_build_requirements_are_locked() -> None:
    """What builds kubemaas (build-system.requires) is installed from the lock too: the
    Dockerfiles and hack/install-python build without isolation, from the group `build`."""
    project = _pyproject()
    build = {_dep(spec, "")[:3] for spec in project["dependency-groups"]["build"]}
    for spec in project["build-system"]["requires"]:
        assert _dep(spec, "")[:3] in build, (
            f"build-system.requires {spec!r} is not in dependency-groups.build")


def _export(path: Path) -> tuple[list[str], dict[str, tuple[str, set[str]]]]:
    """The uv export command in the file's header, and {name: (version, hashes)}."""
    text = path.read_text()
    command = next((line.removeprefix("#").strip() for line in text.splitlines()
                    if line.startswith("#    uv export")), None)
    assert command, f"{path.name}: no `uv export` header; {FIX}"
    pins: dict[str, tuple[str, set[str]]] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.split(" ", 1)[0]
        if first.startswith("#") or "==" not in first:
            continue
        name, version = first.split("==", 1)
        pins[canonicalize_name(name)] = (version, set(re.findall(r"--hash=(sha256:\w+)", block)))
    return shlex.split(command), pins


def _closure(argv: list[str]) -> set[str]:
    """Every package the export's selection reaches in uv.lock, under any marker (the export
    keeps each one with its marker; pip evaluates them at install time)."""
    packages = _packages()
    root = packages["kubemaas"]
    if "--only-group" in argv:
        groups = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--only-group"]
        start = [dep for group in groups for dep in root["dev-dependencies"][group]]
    elif "--all-extras" in argv:
        start = [dep for deps in root["optional-dependencies"].values() for dep in deps]
    else:
        extras = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--extra"]
        start = [dep for extra in extras for dep in root["optional-dependencies"][extra]]
    seen: set[tuple[str, str]] = set()  # (package, "" or one of its extras)
    todo = [(dep["name"], extra) for dep in start for extra in ["", *dep.get("extra", [])]]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        package = packages[name]
        deps = (package.get("optional-dependencies", {}).get(extra, []) if extra
                else package.get("dependencies", []))
        todo += [(dep["name"], e) for dep in deps for e in ["", *dep.get("extra", [])]]
    # `--no-emit-package NAME` leaves NAME out of the export (its own dependencies stay).
    left_out = {canonicalize_name(argv[i + 1]) for i, arg in enumerate(argv)
                if arg == "--no-emit-package"}
    return {canonicalize_name(name) for name, _ in seen} - left_out


def _hashes(package: dict[str, Any]) -> set[str]:
    files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
    return {str(f["hash"]) for f in files}


@pytest.mark.parametrize("path", EXPORTS, ids=[p.name for p in EXPORTS])
def test_requirements_file_is_the_lock_exported(path: Path) -> None:
    argv, pins = _export(path)
    assert f"-o requirements/{path.name}" in " ".join(argv), f"{path.name}: header {argv}"
    packages = {canonicalize_name(name): p for name, p in _packages().items()}
    wanted = _closure(argv)
    assert set(pins) == wanted, (
        f"requirements/{path.name} is not uv.lock's export: missing {sorted(wanted - set(pins))}, "
        f"extra {sorted(set(pins) - wanted)}; {FIX}")
    for name, (version, hashes) in pins.items():
        locked = packages[name]
        assert version == locked["version"], (
            f"requirements/{path.name}: {name}=={version}, uv.lock has {locked['version']}; {FIX}")
        assert hashes and hashes == _hashes(locked), (
            f"requirements/{path.name}: {name}'s hashes differ from uv.lock's; {FIX}")


def test_every_install_has_its_export() -> None:
    """hack/install-python and each image variant install one of these files."""
    names = {p.stem for p in EXPORTS}
    assert {"build", "dev", "operator", "runtime", "runtime-llm"} <= names, (
        f"requirements/ has {sorted(names)}; {FIX}")
    dev_argv, _ = _export(ROOT / "requirements" / "dev.txt")
    assert "--all-extras" in dev_argv, "requirements/dev.txt must hold every extra"
