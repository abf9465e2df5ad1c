"""What the documentation states and a test can read: the settings tables (runtime and operator)
against the settings' definitions, the metric tables against the metrics the code registers, and
every ModelDeployment example of docs/ against the operator's parser. Each check covers a class
of claims, so that a setting, a metric or a spec field added, renamed or re-defaulted in the code
fails here until the docs follow."""

from __future__ import annotations

import copy
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_NONE_CELLS = ("\u2014", "\u2013", "(required)")  # em and en dash


def _cells(doc: str, first: str) -> dict[str, list[str]]:
    """The rows of docs/DOC's tables keyed by their first cell's backticked text."""
    rows: dict[str, list[str]] = {}
    for line in (DOCS / doc).read_text().splitlines():
        m = re.match(rf"\| `({first})` \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in re.split(r"(?<!\\)\|", m.group(2))]
    return rows


def _same_default(cell: str, default: Any) -> bool:
    text = cell.strip("`")
    if default is None or default == () or default == "":
        return cell in _NONE_CELLS or cell.startswith("empty")
    if isinstance(default, bool):
        return text.lower() == str(default).lower()
    if isinstance(default, (int, float)):
        number = re.match(r"-?[0-9.]+", text)
        return number is not None and float(number.group()) == float(default)
    if isinstance(default, tuple):
        return text == " ".join(default)
    return bool(text == default)


def test_runtime_settings_table_states_each_default_and_choice() -> None:
    from kubemaas_runtime import settings
    from kubemaas_runtime.storage import MODEL_SUFFIXES

    rows = _cells("runtime.md", "--[a-z0-9-]+")
    wrong = [(o.flag, rows[o.flag][1], o.default) for o in settings.OPTIONS
             if o.flag in rows and not _same_default(rows[o.flag][1], o.default)]
    assert wrong == [], "docs/runtime.md states other defaults than settings.py"
    choices = {"--format": settings.FORMATS, "--dtype": settings.LLM_DTYPES,
               "--tool-call-parser": settings.TOOL_CALL_PARSERS,
               "--reasoning-parser": settings.REASONING_PARSERS,
               "--scheduling-policy": settings.SCHEDULING_POLICIES,
               "--runner": settings.RUNNERS, "--device": settings.DEVICES,
               "--pad-batches": settings.PAD_BATCHES, "--log-format": settings.LOG_FORMATS,
               "--log-level": settings.LOG_LEVELS, "--model-uri": MODEL_SUFFIXES}
    unnamed = [(flag, c) for flag, values in choices.items() for c in values
               if not re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", rows[flag][2])]
    assert unnamed == [], "docs/runtime.md's table does not name these choices"


def test_llm_settings_table_states_the_runtime_defaults() -> None:
    """docs/llm.md's table of the flags that matter for language models: each a runtime flag,
    and each default given as one literal the one settings.py has."""
    from kubemaas_runtime.settings import OPTIONS

    options = {o.flag: o for o in OPTIONS}
    rows = _cells("llm.md", "--[a-z0-9-]+")
    assert [flag for flag in rows if flag not in options] == []
    wrong = [(flag, cells[0], options[flag].default) for flag, cells in rows.items()
             if re.fullmatch(r"`[^`]+`", cells[0])
             and not _same_default(cells[0], options[flag].default)]
    assert wrong == [], "docs/llm.md states other defaults than settings.py"


def test_operator_settings_table_lists_each_variable_with_its_default() -> None:
    from kubemaas_operator.config import Settings

    rows = _cells("operator.md", "KUBEMAAS_OPERATOR_[A-Z0-9_]+")
    variables = {f"KUBEMAAS_OPERATOR_{f.name.upper()}": f.default for f in fields(Settings)}
    assert sorted(rows) == sorted(variables), "docs/operator.md's settings table"
    wrong = [(var, rows[var][0], default) for var, default in variables.items()
             if var != "KUBEMAAS_OPERATOR_NAMESPACE"  # default: the pod's own namespace
             and not _same_default(rows[var][0], default)]
    assert wrong == [], "docs/operator.md states other defaults than config.py"


def test_operator_field_table_names_every_part_of_the_spec() -> None:
    """docs/operator.md's table of the spec: every field of the CRD's spec, and every field one
    level down but those of the parts its own page describes (autoscaling, rollout, podMetadata)."""
    crd = yaml.safe_load((ROOT / "crds" / "serving.kubemaas.io_modeldeployments.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    table = "\n".join(line for line in (DOCS / "operator.md").read_text().splitlines()
                      if line.startswith("| `"))
    unnamed = []
    for top, node in spec["properties"].items():
        if f"`{top}" not in table:
            unnamed.append(top)
        if top in ("autoscaling", "rollout", "podMetadata"):
            continue
        unnamed += [f"{top}.{key}" for key in node.get("properties", {})
                    if not re.search(rf"`{top}\.{key}`|`{key}`|`{top}\.\w+`, `{key}`", table)]
    assert unnamed == [], "fields docs/operator.md's spec table does not name"
    formats = spec["properties"]["model"]["properties"]["format"]["enum"]
    row = next(line for line in table.splitlines() if line.startswith("| `model.format`"))
    assert [f for f in formats if f"`{f}`" not in row] == []


def _metric_names(lines: list[str]) -> set[str]:
    return {line.split()[2] for line in lines if line.startswith("# TYPE ")}


def test_metric_tables_list_every_metric_served() -> None:
    from kubemaas_runtime.metrics import LLMMetrics, Metrics
    from kubemaas_runtime.security.gate import SecurityMetrics

    served = {
        "runtime.md": _metric_names(Metrics().render().decode().splitlines()),
        "llm.md": _metric_names(LLMMetrics("m", 16, 64).render_lines()),
        "security.md": _metric_names(SecurityMetrics().lines()),
    }
    operator = ROOT / "operator" / "kubemaas_operator"
    served["operator.md"] = {name for path in operator.rglob("*.py")
                             for name in re.findall(r'"(kubemaas_operator_[a-z_]+)"',
                                                    path.read_text())}
    missing = [(doc, name) for doc, names in served.items() for name in sorted(names)
               if f"`{name}" not in (DOCS / doc).read_text()]
    assert missing == [], "metrics served that the docs' tables do not name"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _examples() -> list[tuple[str, dict[str, Any]]]:
    """Every YAML block of README.md and docs/*.md that is (part of) a ModelDeployment's or a
    ModelCache's spec, with where it is."""
    out = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = path.read_text()
        for block in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.S | re.M):
            line = text[:block.start()].count("\n") + 1
            for doc in yaml.safe_load_all(block.group(1)):
                if isinstance(doc, dict) and doc.get("kind", "ModelDeployment") in (
                        "ModelDeployment", "ModelCache"):
                    out.append((f"{path.name}:{line}", doc))
    return out


EXAMPLES = _examples()


def example_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The spec an example means: a ModelCache's as written; a ModelDeployment's fragment
    (`spec:` with the part a page is about) completed with the least a spec needs, and a
    `model.optimize` fragment put under spec.model."""
    if doc.get("kind") == "ModelCache":
        return dict(doc["spec"])
    spec = doc.get("spec", {"model": doc})
    base: dict[str, Any] = {"model": {"uri": "https://models.example.com/m.onnx",
                                      "format": "onnx"},
                            "runtime": {"image": "ghcr.io/kubemaas/runtime:0.1.0"}}
    full = _merge(base, copy.deepcopy(spec))
    if "cache" in full["model"]:
        del full["model"]["uri"]
    probe = full["model"].get("optimize", {}).get("probe", {})
    if "\u2026" in str(probe.get("sha256", "")):  # an abridged digest
        probe["sha256"] = "0" * 64
    return full


@pytest.mark.parametrize(("where", "doc"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_docs_yaml_examples_parse(where: str, doc: dict[str, Any]) -> None:
    """tests/cluster/test_docs_examples.py gives the same objects to the API server."""
    from kubemaas_operator.api.spec import parse_spec
    from kubemaas_operator.modelcache.api import parse_cache_spec

    if doc.get("kind") == "ModelCache":
        parse_cache_spec(example_spec(doc))
    else:
        parse_spec(example_spec(doc))


def test_docs_have_yaml_examples() -> None:
    assert len(EXAMPLES) >= 12


def test_paths_and_tests_the_docs_name_exist() -> None:
    """Files named by their path (a module split, a test file renamed) and tests named as
    FILE::NAME or `test_name`; bench/results/ holds what benchmarks write, not the checkout."""
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))])
    paths = {m.rstrip(".,;:") for m in re.findall(
        r"\b(?:tests|bench|hack|runtime|operator|charts|crds|examples)/[A-Za-z0-9_./-]*[A-Za-z0-9_]",
        text)}
    missing = sorted(p for p in paths if not p.startswith("bench/results/")
                     and not (ROOT / p).exists() and p != "tests/helpers.wait_for")
    assert missing == [], "paths the docs name that do not exist"
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    named = set(re.findall(r"::(test_\w+)", text)) | set(re.findall(r"`(test_\w+)`", text))
    assert sorted(n for n in named if not re.search(rf"def {n}\b", sources)) == []

