"""handlers.snapshot splits the GPUs bound pods hold per node into other workloads' (`used`:
the capacity check's) and the model's own (`own`: a plain rollout's surge room counts them
held, rollout_room.surge_room). Pure: the indexes are plain mappings."""

from __future__ import annotations

from typing import Any

import pytest

from kubemaas_operator import handlers
from kubemaas_operator.config import Settings
from kubemaas_operator.indexes import INDEX_OF
from kubemaas_operator.scheduling import NodeInfo

KEY = ("ns", "m")


def test_the_model_s_own_gpus_are_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = "nvidia.com/gpu"
    idx: dict[str, Any] = {name: {} for name in INDEX_OF.values()}
    idx.update({
        "namespace_index": {}, "quota_index": {}, "owed_index": {},
        "md_index": {KEY: ['{"metadata": {"name": "m"}, "spec": {}}']},
        "node_index": {"nodes": [NodeInfo("a", allocatable={gpu: 8}),
                                 NodeInfo("b", allocatable={gpu: 8})]},
        "pod_index": {("gpu", "a"): [(KEY, {gpu: 2}), (("ns", "other"), {gpu: 1}),
                                     (KEY, {gpu: 2})],
                      ("gpu", "b"): [(None, {gpu: 4})]},
    })
    monkeypatch.setattr(handlers, "_rt", handlers.Runtime(
        settings=Settings(namespace="x"), cluster=None, indexes=idx))  # type: ignore[arg-type]
    snap = handlers.snapshot(KEY)
    assert snap is not None
    assert snap.own == {"a": {gpu: 4}}
    assert snap.used == {"a": {gpu: 1}, "b": {gpu: 4}}
