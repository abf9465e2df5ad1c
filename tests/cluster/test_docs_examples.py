"""Every ModelDeployment and ModelCache example of README.md and docs/*.md (completed as
tests/unit/test_docs_truth.py completes a fragment) is one the real API server accepts: the CRD's
schema and CEL rules, not only the operator's parser."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster.conftest import install
from tests.conftest import Kube
from tests.unit.test_docs_truth import EXAMPLES, example_spec

pytestmark = [pytest.mark.cluster]


def test_the_api_server_accepts_every_docs_example(kube: Kube, namespace: str) -> None:
    install(kube)
    refused = []
    for i, (where, doc) in enumerate(EXAMPLES):
        kind = str(doc.get("kind", "ModelDeployment"))
        obj: dict[str, Any] = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": kind,
                               "metadata": {"name": f"example-{i}", "namespace": namespace},
                               "spec": example_spec(doc)}
        done = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj),
                            check=False)
        if done.returncode != 0:
            refused.append((where, done.stderr.strip()))
    assert refused == []
