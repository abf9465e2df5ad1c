"""Golden files of what a ModelCache renders (its download, clean-up pods and claim) and of a
ModelDeployment mounting a Ready cache (examples/model-cache*.yaml, examples/cached-model.yaml).
Regenerate with KUBEMAAS_UPDATE_GOLDEN=1 .venv/bin/pytest tests/golden and review the diff."""

from __future__ import annotations

from pathlib import Path

import yaml
from tests.goldens import check, stale

from kubemaas_operator.api import parse_model, parse_spec
from kubemaas_operator.modelcache import implicit
from kubemaas_operator.modelcache.api import parse_cache_spec
from kubemaas_operator.modelcache.mount import CacheMount
from kubemaas_operator.modelcache.render import CacheRef, claim, download_pod, removal_pod
from kubemaas_operator.render import RenderContext, render

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "modelcache"
UID = "00000000-0000-0000-0000-000000000002"


def _cache(example: str, node: str | None) -> str:
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    spec = parse_cache_spec(doc["spec"])
    ref = CacheRef(name=doc["metadata"]["name"], namespace="models", uid=UID)
    out = [download_pod(ref, spec, node, 1), removal_pod(ref, spec, node, "clean")]
    made = claim(ref, spec)
    return yaml.safe_dump_all([*([made] if made else []), *out], sort_keys=True)


def test_node_cache_pods() -> None:
    check(DATA / "model-cache.yaml", _cache("model-cache.yaml", "gpu-h100-0"),
          "the pods of examples/model-cache.yaml on gpu-h100-0")


def test_pvc_cache_pods() -> None:
    check(DATA / "model-cache-pvc.yaml", _cache("model-cache-pvc.yaml", None),
          "the claim and pods of examples/model-cache-pvc.yaml")


def test_model_on_a_ready_cache() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "cached-model.yaml").read_text())
    ctx = RenderContext(name=doc["metadata"]["name"], namespace="models", uid=UID,
                        cache=CacheMount(name="resnet-files", ready=True,
                                         claim_name="resnet-files-cache", sub_path="resnet-files"))
    node_ctx = RenderContext(name=doc["metadata"]["name"], namespace="models", uid=UID,
                             cache=CacheMount(name="resnet-files", ready=True,
                                              host_path="/var/lib/kubemaas/model-cache/models/x",
                                              nodes=("gpu-h100-0", "gpu-h100-1")))
    spec = parse_spec(doc["spec"])
    check(DATA / "cached-model.yaml", yaml.safe_dump_all(render(spec, ctx).children,
                                                         sort_keys=True),
          "examples/cached-model.yaml on a Ready pvc cache")
    deployment = render(spec, node_ctx).children[0]
    check(DATA / "cached-model-node.yaml", yaml.safe_dump(deployment, sort_keys=True),
          "examples/cached-model.yaml's Deployment on a node cache Ready on two nodes")


def test_cache_an_auto_cached_model_asks_for() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "auto-cached-model.yaml").read_text())
    raw = doc["spec"]["model"]
    plan = implicit.plan("models", implicit.Owner(doc["metadata"]["name"], UID),
                         parse_model(raw), raw["autoCache"], {})
    assert plan.create is not None
    parse_cache_spec(plan.create["spec"])  # a valid ModelCache
    check(DATA / "auto-cached-model.yaml", yaml.safe_dump(plan.create, sort_keys=True),
          "the ModelCache the operator creates for examples/auto-cached-model.yaml")


def test_no_stale_golden_files() -> None:
    produced = [DATA / f"{n}.yaml" for n in ("model-cache", "model-cache-pvc", "cached-model",
                                             "cached-model-node", "auto-cached-model")]
    assert not stale(DATA, produced)
