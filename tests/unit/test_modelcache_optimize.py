"""spec.model.optimize done once in a ModelCache, the pure parts: option keys and sets, the
optimize pods (per key and copy), status.optimizations from their reports, and the model side
(waiting for the cache, the nodes it may run on, the init container pointed at the result)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from kubemaas_operator.api import ModelDeploymentSpec, parse_spec
from kubemaas_operator.modelcache import api
from kubemaas_operator.modelcache.mount import mount_status
from kubemaas_operator.modelcache.optimize import (
    KEY_LABEL,
    events,
    optimize_pod,
    plan,
    wants,
)
from kubemaas_operator.modelcache.render import CacheRef, spec_hash, target_id
from kubemaas_operator.modelcache.status import CachePod, Copy
from kubemaas_operator.render import RenderContext, render
from kubemaas_operator.render import cached_optimization as co
from kubemaas_operator.render.optimization import options_key

REF = CacheRef(name="mlp", namespace="ml", uid="u-1")
NODE = api.parse_cache_spec({"source": {"uri": "s3://models/mlp/"},
                             "storage": {"type": "node", "node": {"nodes": ["n1", "n2"]}}})
PVC = api.parse_cache_spec({"source": {"uri": "s3://models/mlp/"},
                            "storage": {"type": "pvc", "pvc": {"claimName": "shared"}}})
CRD = Path(__file__).resolve().parents[2] / "crds" / "serving.kubemaas.io_modelcaches.yaml"
FIGURES = {"serving": "optimized", "reason": "accuracy guard held", "quantize": "fp16",
           "convert": None, "guard": {"maxRelError": 0.05},
           "sizeBytes": {"original": 1000, "optimized": 500},
           "latencyMs": {"original": {"batch1": 1.0}, "optimized": {"batch1": 0.5}},
           "errors": {"scores": {"maxAbsError": 0.001}}, "cached": False, "sha256": "a" * 64}


def model(**optimize: Any) -> ModelDeploymentSpec:
    raw: dict[str, Any] = {"model": {"cache": "mlp", "format": "onnx"},
                           "runtime": {"image": "runtime:1", "resources": {"cpu": "2",
                                                                           "memory": "3Gi"}}}
    if optimize:
        raw["model"]["optimize"] = optimize
    return parse_spec(raw)


def pod(name: str, key: str, node: str | None, phase: str, spec: api.CacheSpec = NODE,
        exit_code: int | None = None, message: str | None = None) -> CachePod:
    return CachePod(name=name, role="optimize", target=target_id(node), node=node,
                    spec_hash=spec_hash(spec), attempt=0, phase=phase, exit_code=exit_code,
                    message=message, key=key)


def test_one_key_per_option_set_shared_by_the_models_that_ask_for_it() -> None:
    fp16, tight = model(quantize="fp16"), model(quantize="fp16", maxRelError=0.001)
    assert options_key(fp16) == options_key(model(quantize="fp16"))
    assert options_key(fp16) != options_key(tight)
    batched = parse_spec({"model": {"cache": "mlp", "format": "onnx",
                                    "optimize": {"quantize": "fp16"}},
                          "runtime": {"image": "runtime:1", "batching": {"maxBatchSize": 16}}})
    assert options_key(batched) != options_key(fp16)  # it measures at another batch size
    got = wants([("b", fp16), ("a", fp16), ("c", tight), ("plain", model())], "default:1")
    assert sorted(len(w.models) for w in got) == [1, 2]
    shared = next(w for w in got if len(w.models) == 2)
    assert shared.models == ("a", "b") and shared.key == options_key(fp16)
    assert ("KUBEMAAS_OPTIMIZE_QUANTIZE", "fp16") in shared.options
    assert (shared.image, shared.cpu, shared.memory) == ("runtime:1", "2", "3Gi")


def test_the_optimize_pod_of_a_node_copy_and_of_a_claim() -> None:
    (want,) = wants([("a", model(quantize="int8-dynamic"))], "default:1")
    p = optimize_pod(REF, NODE, "n1", want)
    env = {e["name"]: e["value"] for e in p["spec"]["containers"][0]["env"]}
    assert p["spec"]["nodeName"] == "n1" and p["spec"]["restartPolicy"] == "Never"
    assert p["spec"]["volumes"][0]["hostPath"]["path"] == "/var/lib/kubemaas/model-cache/ml/mlp"
    assert env["KUBEMAAS_MODEL_URI"] == "file:///cache"
    assert env["KUBEMAAS_OPTIMIZE_DIR"] == f"/cache/.kubemaas-optimized/{want.key}"
    assert env["KUBEMAAS_OPTIMIZE_PUBLISH"] == "1" and env["KUBEMAAS_DEVICE"] == "cpu"
    assert env["KUBEMAAS_OPTIMIZE_QUANTIZE"] == "int8-dynamic"
    assert p["metadata"]["labels"][KEY_LABEL] == want.key
    assert p["metadata"]["labels"]["serving.kubemaas.io/cache-role"] == "optimize"
    assert p["metadata"]["name"] == f"mlp-optimize-{want.key[:8]}-{target_id('n1')}"
    assert p["spec"]["containers"][0]["command"] == ["python", "-m", "kubemaas_runtime.optimize"]
    assert p["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "2", "memory": "3Gi"}
    c = optimize_pod(REF, PVC, None, want)
    env = {e["name"]: e["value"] for e in c["spec"]["containers"][0]["env"]}
    assert c["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shared"
    assert env["KUBEMAAS_OPTIMIZE_DIR"] == f"/cache-volume/mlp/.kubemaas-optimized/{want.key}"
    assert c["spec"]["securityContext"]["runAsNonRoot"] is True and "nodeName" not in c["spec"]


def test_status_once_per_key_and_node_copy() -> None:
    fp16, tight = model(quantize="fp16"), model(quantize="fp16", maxAbsError=0)
    wanted = wants([("fast", fp16), ("strict", tight)], "default:1")
    k_fast, k_strict = options_key(fp16), options_key(tight)
    copies = [Copy("n1", "Ready", "Ready", ""), Copy("n2", "Downloading", "Downloading", "")]
    # nothing yet: one pod per key on the Ready copy only
    first = plan(REF, NODE, copies, [], wanted)
    assert sorted(p["spec"]["nodeName"] for p in first.create) == ["n1", "n1"]
    assert {e["phase"] for e in first.entries} == {"Optimizing"}
    rejected = {**FIGURES, "serving": "original",
                "reason": "accuracy guard failed: scores: max abs error 0.001 > 0"}
    pods = [pod("p-fast", k_fast, "n1", "Succeeded", exit_code=0, message=json.dumps(FIGURES)),
            pod("p-strict", k_strict, "n1", "Succeeded", exit_code=0,
                message=json.dumps(rejected)),
            pod("p-old", "gone", "n1", "Succeeded", exit_code=0, message="{}")]
    done = plan(REF, NODE, copies, pods, wanted)
    assert not done.create and done.delete == ["p-old"]  # no model asks for that key any more
    by_key = {e["key"]: e for e in done.entries}
    fast, strict = by_key[k_fast], by_key[k_strict]
    assert (fast["phase"], fast["reason"], fast["serving"]) == ("Ready", "Optimized", "optimized")
    assert fast["report"]["sizeBytes"] == {"original": 1000, "optimized": 500}
    assert "cached" not in fast["report"] and fast["models"] == ["fast"]
    assert fast["options"] == {"quantize": "fp16"}
    assert by_key[k_strict]["options"] == {"quantize": "fp16", "maxAbsError": "0"}
    assert fast["nodes"] == [{"name": "n1", "phase": "Ready", "reason": "Optimized",
                              "message": "accuracy guard held", "serving": "optimized"}]
    # the guard failed: recorded once, the original serves
    assert (strict["phase"], strict["reason"], strict["serving"]) == (
        "Ready", "OptimizationRejected", "original")
    assert strict["message"].startswith("accuracy guard failed")
    # one Event per outcome, once
    said = events(first.entries, done.entries)
    assert sorted((t, r) for t, r, _ in said) == [("Normal", "Optimized"),
                                                   ("Warning", "OptimizationRejected")]
    assert any("maxAbsError 0" in m and "models strict" in m for _, _, m in said)
    assert events(done.entries, done.entries) == []
    # the second node's copy becomes Ready: once more per key, there
    copies[1] = Copy("n2", "Ready", "Ready", "")
    more = plan(REF, NODE, copies, pods[:2], wanted)
    assert sorted(p["spec"]["nodeName"] for p in more.create) == ["n2", "n2"]
    assert {e["phase"] for e in more.entries} == {"Optimizing"}


def test_a_pod_that_fails_without_a_report_fails_its_copy() -> None:
    (want,) = wanted = wants([("a", model(quantize="fp16"))], "default:1")
    crashed = pod("p", want.key, None, "Failed", PVC, exit_code=137)
    (entry,) = plan(REF, PVC, [Copy(None, "Ready", "Ready", "")], [crashed], wanted).entries
    assert (entry["phase"], entry["reason"]) == ("Failed", "OptimizeFailed")
    assert "exit code 137" in entry["message"] and "nodes" not in entry
    error = pod("p", want.key, None, "Failed", PVC, exit_code=1,
                message="optimize: error: --quantize fp16 works on ONNX models")
    (entry,) = plan(REF, PVC, [Copy(None, "Ready", "Ready", "")], [error], wanted).entries
    assert entry["message"].startswith("optimize: error: --quantize fp16")
    broke = pod("p", want.key, None, "Succeeded", PVC, exit_code=0, message=json.dumps(
        {**FIGURES, "serving": "original", "reason": "optimization failed: out of memory"}))
    (entry,) = plan(REF, PVC, [Copy(None, "Ready", "Ready", "")], [broke], wanted).entries
    assert (entry["phase"], entry["reason"], entry["serving"]) == (
        "Ready", "OptimizeFailed", "original")  # recorded: the model pods serve the original
    (entry,) = plan(REF, PVC, [Copy(None, "Downloading", "Downloading", "")], [], wanted).entries
    assert (entry["phase"], entry["reason"]) == ("Pending", "NoReadyCopy")


def test_status_entries_fit_the_crd() -> None:
    (version,) = yaml.safe_load(CRD.read_text())["spec"]["versions"]
    item = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "optimizations"]["items"]["properties"]
    wanted = wants([("a", model(quantize="fp16"))], "default:1")
    pods = [pod("p", wanted[0].key, "n1", "Succeeded", exit_code=0, message=json.dumps(FIGURES))]
    (entry,) = plan(REF, NODE, [Copy("n1", "Ready", "Ready", "")], pods, wanted).entries
    assert set(entry) <= set(item)
    assert set(entry["nodes"][0]) <= set(item["nodes"]["items"]["properties"])


def _cache(storage: str, optimizations: list[dict[str, Any]]) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": 1, "phase": "Ready",
                              "optimizations": optimizations}
    if storage == "node":
        status.update(path="/var/lib/kubemaas/model-cache/ml/mlp",
                      nodes=[{"name": "n1", "phase": "Ready"}, {"name": "n2", "phase": "Ready"}])
    else:
        status.update(claimName="shared", path="mlp")
    return {"metadata": {"generation": 1}, "spec": {"storage": {"type": storage}},
            "status": status}


def test_the_model_waits_for_its_key_and_runs_where_it_finished() -> None:
    spec = model(quantize="fp16")
    key = options_key(spec)
    none_yet = mount_status("mlp", _cache("pvc", []))
    waiting = co.wait(spec, none_yet)
    assert waiting is not None and (waiting.reason, waiting.phase) == ("CacheOptimizing",
                                                                       "Pending")
    running = mount_status("mlp", _cache("pvc", [{"key": key, "phase": "Optimizing",
                                                  "message": "pod mlp-optimize-x"}]))
    waiting = co.wait(spec, running)
    assert waiting is not None and "pod mlp-optimize-x" in waiting.message
    done = mount_status("mlp", _cache("pvc", [{"key": key, "phase": "Ready"}]))
    assert co.wait(spec, done) is None and co.wait(model(), none_yet) is None
    failed = mount_status("mlp", _cache("pvc", [{"key": key, "phase": "Failed"}]))
    assert co.wait(spec, failed) is None  # the pods optimize themselves
    nodes = mount_status("mlp", _cache("node", [{"key": key, "phase": "Optimizing", "nodes": [
        {"name": "n1", "phase": "Ready"}, {"name": "n2", "phase": "Optimizing"}]}]))
    assert co.wait(spec, nodes) is None and co.narrow(spec, nodes).nodes == ("n1",)
    assert co.narrow(model(), nodes).nodes == ("n1", "n2")


def test_the_rendered_pod_reads_the_cache_result_on_the_nodes_that_have_it() -> None:
    spec = model(quantize="fp16")
    key = options_key(spec)
    cache = mount_status("mlp", _cache("node", [{"key": key, "phase": "Optimizing", "nodes": [
        {"name": "n1", "phase": "Ready"}, {"name": "n2", "phase": "Optimizing"}]}]))
    rendered = render(spec, RenderContext(name="m", namespace="ml", uid="u", cache=cache))
    dep = next(c for c in rendered.children if c["kind"] == "Deployment")
    pod_spec = dep["spec"]["template"]["spec"]
    (init,) = pod_spec["initContainers"]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["KUBEMAAS_OPTIMIZE_FROM_CACHE"] == (
        f"/var/lib/kubemaas/model-cache/.kubemaas-optimized/{key}")
    assert env["KUBEMAAS_MODEL_URI"] == "file:///var/lib/kubemaas/model-cache"
    assert {"name": "model-files", "mountPath": "/var/lib/kubemaas/model-cache",
            "readOnly": True} in init["volumeMounts"]
    (term,) = pod_spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchFields"] == [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]
    runtime = {e["name"]: e["value"] for e in pod_spec["containers"][0]["env"]}
    assert runtime["KUBEMAAS_MODEL_URI"] == "file:///var/cache/kubemaas/optimized/serve"


def test_an_optimize_pod_that_cannot_start_says_why() -> None:
    """An optimize pod stuck Pending (the model's runtime image cannot be pulled, say) left the
    entry, and the models waiting with CacheOptimizing, at 'pod NAME', for good. Now the
    entry's message carries the kubelet's or the scheduler's reason."""
    from dataclasses import replace
    (want,) = wanted = wants([("a", model(quantize="fp16"))], "default:1")
    stuck = replace(pod("p", want.key, None, "Pending", PVC),
                    waiting='ImagePullBackOff: Back-off pulling image "runtime:1"')
    (entry,) = plan(REF, PVC, [Copy(None, "Ready", "Ready", "")], [stuck], wanted).entries
    assert entry["phase"] == "Optimizing"
    assert entry["message"] == 'pod p cannot start: ImagePullBackOff: Back-off pulling image ' \
        '"runtime:1"'


def test_an_optimize_pod_waits_for_the_old_one_of_its_name_to_go() -> None:
    """An option set asked for again while its pod of the same name still terminates (the
    model re-created with another runtime image, or new files): the new pod was applied onto
    the terminating one, which the API server refuses when the spec differs (the cache turned
    Failed, PodRejected, as for download pods). Now the cache waits for the old pod to go."""
    from dataclasses import replace
    (want,) = wanted = wants([("a", model(quantize="fp16"))], "default:1")
    ready = [Copy(None, "Ready", "Ready", "")]
    (created,) = plan(REF, PVC, ready, [], wanted).create
    going = replace(pod(created["metadata"]["name"], want.key, None, "Running", PVC),
                    deleting=True)
    older = replace(going, deleting=False, spec_hash="0ld")
    for old in (going, older):
        p = plan(REF, PVC, ready, [old], wanted)
        assert not p.create and p.entries[0]["message"] == "waiting for its pod"
