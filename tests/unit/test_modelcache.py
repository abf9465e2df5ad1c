"""ModelCache's pure parts: the typed spec against the CRD, the rendered pods, the progress
lines and reports, the status a set of pods gives, the eviction choice, the mount."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.unit.test_api_schema import _compare

from kubemaas_operator.api import SHAPE_KEYS
from kubemaas_operator.api.fields import SpecError
from kubemaas_operator.modelcache import api
from kubemaas_operator.modelcache.evict import Resident, choose_evictions
from kubemaas_operator.modelcache.mount import (
    MOUNT_URI,
    cache_wait,
    mount_cache,
    mount_status,
)
from kubemaas_operator.modelcache.progress import MODEL_KEYS, last_progress, parse_report
from kubemaas_operator.modelcache.render import CacheRef, download_pod, removal_pod, spec_hash
from kubemaas_operator.modelcache.status import (
    CachePod,
    Decision,
    cache_status,
    copy_state,
    ready_nodes,
)

CRD = Path(__file__).resolve().parents[2] / "crds" / "serving.kubemaas.io_modelcaches.yaml"
REF = CacheRef(name="llama", namespace="ml", uid="u-1")
NOW = datetime(2026, 11, 30, 19, 0, tzinfo=UTC)
NODE_SPEC = {"source": {"uri": "hf://acme/llama-tiny", "revision": "abc123",
                        "secretName": "hf-token", "include": ["*.safetensors", "*.json"]},
             "storage": {"type": "node", "node": {"nodeSelector": {"pool": "gpu"}}}}
PVC_SPEC = {"source": {"uri": "s3://models/llama/", "secretName": "s3-creds"},
            "storage": {"type": "pvc", "pvc": {"storageClassName": "nfs", "size": "100Gi"}}}
REPORT = {"phase": "Ready", "reason": "Ready", "message": "2 files verified",
          "files": [{"path": "config.json", "size": 600, "sha256": "a" * 64},
                    {"path": "model.safetensors", "size": 4000, "sha256": "b" * 64}],
          "model": {"architecture": "LlamaForCausalLM", "parameters": 700000,
                    "weightBytes": 2800000, "numLayers": 2, "hiddenSize": 64,
                    "numAttentionHeads": 4, "numKeyValueHeads": 2, "headDim": 16,
                    "maxPositionEmbeddings": 256, "dtype": "float32", "extra": "dropped"}}


def _schema() -> dict[str, Any]:
    (version,) = yaml.safe_load(CRD.read_text())["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


def test_spec_model_matches_crd() -> None:
    problems: list[str] = []
    _compare(api.CacheSpec, _schema()["properties"]["spec"], "spec", problems)
    assert not problems, "\n".join(problems)


def test_status_model_keys_are_what_gpu_sizing_reads() -> None:
    keys = set(_schema()["properties"]["status"]["properties"]["model"]["properties"])
    assert keys == {"architecture", "parameters", "weightBytes", "numLayers", "hiddenSize",
                    "numAttentionHeads", "numKeyValueHeads", "headDim", "maxPositionEmbeddings",
                    "dtype", "slidingWindow", "slidingWindowLayers"}
    assert keys == set(SHAPE_KEYS) == set(MODEL_KEYS)


@pytest.mark.parametrize(("raw", "says"), [
    ({**NODE_SPEC, "source": {"uri": "hf://acme/x"}}, "spec.source.revision: is required"),
    ({**PVC_SPEC, "source": {"uri": "ftp://x/y"}}, "spec.source.uri"),
    ({**PVC_SPEC, "storage": {"type": "pvc", "pvc": {"claimName": "a", "size": "1Gi"}}},
     "not both"),
    ({**NODE_SPEC, "storage": {"type": "node", "node": {}}}, "needs nodeSelector"),
    ({**NODE_SPEC, "download": {"env": [{"name": "HF_TOKEN", "value": "x"}]}}, "set by the"),
])
def test_bad_specs_name_the_field(raw: dict[str, Any], says: str) -> None:
    with pytest.raises(SpecError, match=says):
        api.parse_cache_spec(raw)


def test_download_pod_for_a_node() -> None:
    spec = api.parse_cache_spec(NODE_SPEC)
    pod = download_pod(REF, spec, "gpu-1", 1)
    (c,) = pod["spec"]["containers"]
    assert pod["spec"]["nodeName"] == "gpu-1" and pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["volumes"] == [{"name": "cache", "hostPath": {
        "path": "/var/lib/kubemaas/model-cache/ml/llama", "type": "DirectoryOrCreate"}}]
    assert c["command"] == ["python", "-m", "kubemaas_runtime.fetch"]
    assert c["args"][:6] == ["--source", "hf://acme/llama-tiny", "--dest", "/cache",
                             "--revision", "abc123"]
    assert c["args"].count("--include") == 2 and "--termination-log" in c["args"]
    assert c["env"] == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "hf-token", "key": "token"}}}]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ModelCache"
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_download_pod_for_a_claim_is_restricted() -> None:
    spec = api.parse_cache_spec(PVC_SPEC)
    pod = download_pod(REF, spec, None, 2)
    (c,) = pod["spec"]["containers"]
    assert pod["metadata"]["name"] == "llama-fetch-pvc-a2"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert c["args"][3] == "/cache-volume/llama"
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "llama-cache"}
    clean = removal_pod(REF, spec, None, "clean")
    assert clean["metadata"]["name"] == "llama-clean-pvc"
    assert clean["spec"]["containers"][0]["command"][-1] == "/cache-volume/llama"


def test_progress_parse_takes_the_newest_line() -> None:
    text = "\n".join([
        "starting", json.dumps({"event": "progress", "bytesDone": 10, "bytesTotal": 100,
                                "filesDone": 0, "filesTotal": 2, "rateBytesPerSecond": 5.0,
                                "etaSeconds": 18}),
        json.dumps({"event": "progress", "bytesDone": 60, "bytesTotal": 100, "filesDone": 1,
                    "filesTotal": 2, "rateBytesPerSecond": 25.5, "etaSeconds": 1.6}),
        '{"event": "progress", "bytesDo'])  # a partial last line
    p = last_progress(text)
    assert p is not None and (p.bytes_done, p.files_done, p.rate, p.eta) == (60, 1, 25.5, 1.6)
    assert last_progress("no json here\n{not json}") is None


def test_report_parse() -> None:
    fetch = {"event": "result", "phase": "Ready", "reason": None, "message": "fetched 2 files",
             "bytesTotal": 4600, "filesTotal": 3, "files": REPORT["files"], "filesOmitted": 1,
             "shape": {**REPORT["model"], "parameters": None}, "attempts": 1}
    r = parse_report(json.dumps(fetch), 0)  # what kubemaas_runtime.fetch writes
    assert r is not None and (r.phase, r.reason, r.files_omitted) == ("Ready", "Ready", 1)
    assert r.model["architecture"] == "LlamaForCausalLM" and "parameters" not in r.model
    r = parse_report(json.dumps(REPORT), 0)
    assert r is not None and r.phase == "Ready" and r.bytes_total == 4600
    assert "extra" not in r.model and r.model["numKeyValueHeads"] == 2
    failed = parse_report(json.dumps({"phase": "Failed", "reason": "ChecksumMismatch",
                                      "message": "model.safetensors: want aa, got bb"}), 1)
    assert failed is not None and failed.reason == "ChecksumMismatch"
    assert parse_report(None, 137) is None  # killed: retried
    assert parse_report('{"phase": "Ready", "files": [', 0) is not None  # truncated, exit 0


def _pod(name: str, phase: str, attempt: int = 1, node: str | None = "gpu-1", **kw: Any
         ) -> CachePod:
    from kubemaas_operator.modelcache.render import target_id
    spec = api.parse_cache_spec(NODE_SPEC if node else PVC_SPEC)
    return CachePod(name=name, role=kw.pop("role", "fetch"), target=target_id(node), node=node,
                    spec_hash=spec_hash(spec), attempt=attempt, phase=phase, **kw)


def _run(raw: dict[str, Any], nodes: list[str | None], pods: list[CachePod],
         previous: dict[str, Any] | None = None, now: datetime = NOW,
         progress: dict[str, Any] | None = None) -> tuple[dict[str, Any], Decision]:
    spec = api.parse_cache_spec(raw)
    d = Decision(status={})
    copies = [copy_state(REF, spec, n, pods, progress or {}, previous or {}, False, now, d)
              for n in nodes]
    return cache_status(REF, spec, 1, copies, previous or {}, now), d


def test_status_first_pass_creates_one_pod_per_node() -> None:
    status, d = _run(NODE_SPEC, ["gpu-1", "gpu-2"], [])
    assert status["phase"] == "Pending" and len(d.create) == 2
    assert {p["spec"]["nodeName"] for p in d.create} == {"gpu-1", "gpu-2"}


def test_status_follows_progress_and_report() -> None:
    from kubemaas_operator.modelcache.progress import Progress
    running = _pod("p1", "Running")
    status, d = _run(NODE_SPEC, ["gpu-1"], [running], progress={"p1": Progress(
        bytes_done=50, bytes_total=200, files_done=1, files_total=3, rate=10.0, eta=15.0)})
    assert status["phase"] == "Downloading" and d.read_logs == ["p1"]
    assert status["bytesDone"] == 50 and status["etaSeconds"] == 15.0
    assert status["progress"].endswith("(25%)")
    done = _pod("p1", "Succeeded", exit_code=0, message=json.dumps(REPORT))
    status, d = _run(NODE_SPEC, ["gpu-1", "gpu-2"],
                     [done, _pod("p2", "Succeeded", node="gpu-2", exit_code=0,
                                 message=json.dumps(REPORT))])
    assert status["phase"] == "Ready" and not d.create
    assert status["model"]["architecture"] == "LlamaForCausalLM"
    assert [f["sha256"] for f in status["files"]] == ["a" * 64, "b" * 64]
    assert ready_nodes(status) == ["gpu-1", "gpu-2"]


@pytest.mark.parametrize("reason", ["Stalled", "ChecksumMismatch", "DiskFull"])
def test_a_failed_report_fails_the_cache(reason: str) -> None:
    pod = _pod("p1", "Failed", exit_code=1, message=json.dumps(
        {"phase": "Failed", "reason": reason, "message": "why"}))
    status, d = _run(NODE_SPEC, ["gpu-1"], [pod])
    assert (status["phase"], status["reason"]) == ("Failed", reason) and not d.create


def test_a_killed_pod_is_retried_with_backoff() -> None:
    ended = NOW - timedelta(seconds=5)
    pod = _pod("p1", "Failed", exit_code=137, finished_at=ended)
    status, d = _run(NODE_SPEC, ["gpu-1"], [pod])
    assert status["reason"] == "Retrying" and not d.create
    assert d.requeue_after == pytest.approx(5.0)
    status, d = _run(NODE_SPEC, ["gpu-1"], [pod], now=NOW + timedelta(seconds=6))
    assert [p["metadata"]["annotations"]["serving.kubemaas.io/cache-attempt"]
            for p in d.create] == ["2"]
    last = _pod("p4", "Failed", attempt=4, exit_code=137, finished_at=ended)
    status, _ = _run(NODE_SPEC, ["gpu-1"], [last])
    assert (status["phase"], status["reason"]) == ("Failed", "DownloadFailed")


def test_eviction_is_lru_and_spares_caches_in_use() -> None:
    residents = [Resident(("a", "old"), 40, "2026-11-01T00:00:00Z", False),
                 Resident(("a", "busy"), 40, "2026-10-01T00:00:00Z", True),
                 Resident(("a", "new"), 40, "2026-11-29T00:00:00Z", False)]
    choice = choose_evictions(130, residents, ("a", "me"), 30)
    assert choice.fits and choice.victims == (("a", "old"),)
    assert choose_evictions(200, residents, ("a", "me"), 30).victims == ()
    blocked = choose_evictions(60, residents, ("a", "me"), 30)
    assert not blocked.fits and "a/busy" in blocked.message


def _deployment() -> dict[str, Any]:
    return {"spec": {"template": {"metadata": {}, "spec": {"containers": [
        {"name": "runtime", "volumeMounts": []}]}}}}


def test_mount_node_cache_only_on_ready_nodes() -> None:
    cache = {"metadata": {"generation": 2}, "spec": {"storage": {"type": "node"}},
             "status": {"observedGeneration": 2, "phase": "Downloading",
                        "path": "/var/lib/kubemaas/model-cache/ml/llama",
                        "nodes": [{"name": "gpu-1", "phase": "Ready"},
                                  {"name": "gpu-2", "phase": "Downloading"}]}}
    m = mount_status("llama", cache)
    assert m.ready and m.nodes == ("gpu-1",)
    dep = _deployment()
    mount_cache(dep, m)
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["volumeMounts"][-1] == {
        "name": "model-files", "mountPath": "/var/lib/kubemaas/model-cache", "readOnly": True}
    assert pod["volumes"][-1]["hostPath"]["type"] == "Directory"
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert term["matchFields"] == [{"key": "metadata.name", "operator": "In",
                                    "values": ["gpu-1"]}]
    assert MOUNT_URI == "file:///var/lib/kubemaas/model-cache"


def test_a_model_waits_for_its_cache() -> None:
    waiting = cache_wait("llama", mount_status("llama", None))
    assert waiting is not None and (waiting.reason, waiting.phase) == ("CacheNotFound", "Pending")
    failed = cache_wait("llama", mount_status("llama", {
        "metadata": {"generation": 1}, "spec": {"storage": {"type": "pvc"}},
        "status": {"observedGeneration": 1, "phase": "Failed", "reason": "Stalled"}}))
    assert failed is not None and failed.phase == "Failed" and "Stalled" in failed.message
    assert cache_wait(None, None) is None


def test_size_limit_stops_the_download_for_good() -> None:
    from kubemaas_operator.modelcache.progress import Progress
    raw = {**NODE_SPEC, "sizeLimit": "1Ki"}
    running = _pod("p1", "Running")
    spec = api.parse_cache_spec(raw)
    running = CachePod(**{**running.__dict__, "spec_hash": spec_hash(spec)})
    status, d = _run(raw, ["gpu-1"], [running], progress={"p1": Progress(
        bytes_done=10, bytes_total=5000)})
    assert (status["phase"], status["reason"]) == ("Failed", "DiskFull") and d.delete == ["p1"]
    gone = CachePod(**{**running.__dict__, "deleting": True})
    again, d = _run(raw, ["gpu-1"], [gone], previous=status)
    assert (again["phase"], again["reason"]) == ("Failed", "DiskFull") and not d.create


@pytest.mark.parametrize("size", ["1e400", "NaN", "Infinity", "1e30", "-5",
                                  "100000000000000000000000000000"])
def test_a_report_with_an_impossible_number_fails_the_copy(size: str) -> None:
    """JSON admits NaN, 1e400 (inf) and 1e30; int() of the first two raised on every reconcile
    (a retry every 5 s, Downloading forever) and the last was refused in the int64 status."""
    from kubemaas_operator.modelcache.progress import parse_report

    report = parse_report('{"phase":"Ready","files":[{"path":"a","size":N}]}'.replace("N", size),
                          0)
    assert report is not None and report.phase == "Failed" and report.reason == "BadReport"
    assert "files[0].size" in report.message
    for key in ("bytesTotal", "filesOmitted"):
        bad = parse_report(f'{{"phase":"Ready","{key}":{size}}}', 0)
        assert bad is not None and bad.reason == "BadReport" and key in bad.message


def test_impossible_progress_is_skipped_and_shapes_stay_in_int64() -> None:
    from kubemaas_operator.modelcache.progress import model_shape, parse_progress_line, parse_report

    for line in ('{"event":"progress","bytesDone":NaN}',
                 '{"event":"progress","bytesDone":1,"rateBytesPerSecond":Infinity}',
                 '{"event":"progress","bytesTotal":1e30}'):
        assert parse_progress_line(line) is None
    fine = parse_progress_line('{"event":"progress","bytesDone":5,"etaSeconds":-1}')
    assert fine is not None and fine.bytes_done == 5 and fine.eta is None
    assert model_shape({"parameters": 10**30, "hiddenSize": 64}) == {"hiddenSize": 64}
    odd = parse_report('{"phase":"Ready","message":{"x":1}}', 0)
    assert odd is not None and odd.message == ""  # no Python repr in the status


def test_a_failed_copy_is_tried_again_once_the_spec_changes() -> None:
    """spec.download (tolerations, image, resources) is not in the spec hash: a copy that
    failed because of it used to stay Failed after the fix, with the old message."""
    spec = api.parse_cache_spec(PVC_SPEC)
    failed = {"phase": "Failed", "reason": "PodRejected", "message": "Weird", "observedGeneration":
              1, "specHash": spec_hash(spec)}
    for respec, created in ((False, 0), (True, 1)):
        d = Decision(status={})
        copy = copy_state(REF, spec, None, [], {}, failed, False, NOW, d, respec)
        assert len(d.create) == created and copy.phase == ("Downloading" if respec else "Failed")
    pod = _pod("p1", "Failed", attempt=2, node=None, exit_code=1, message=json.dumps(
        {"phase": "Failed", "reason": "Stalled", "message": "why"}))
    d = Decision(status={})
    copy = copy_state(REF, spec, None, [pod], {}, failed, False, NOW, d, True)
    assert copy.reason == "Retrying" and [p["metadata"]["annotations"][
        "serving.kubemaas.io/cache-attempt"] for p in d.create] == ["3"]


def test_a_caches_pods_are_no_models_children() -> None:
    """Model `flip` beside ModelCache `flip` counted the cache's download pod as a replica of
    its own (same instance and managed-by labels) and stayed Progressing while it ran."""
    from kubemaas_operator.indexes import child_key
    from kubemaas_operator.modelcache.render import labels
    from kubemaas_operator.render import APP_NAME, INSTANCE, MANAGED_BY, MANAGER, NAME

    spec = api.parse_cache_spec(NODE_SPEC)
    cache_pod = labels(CacheRef(name="flip", namespace="ml", uid="u"), "fetch", "gpu-1", spec)
    assert cache_pod[INSTANCE] == "flip" and child_key("ml", cache_pod) is None
    model_pod = {NAME: APP_NAME, INSTANCE: "flip", MANAGED_BY: MANAGER}
    assert child_key("ml", model_pod) == ("ml", "flip")


def test_a_new_spec_waits_for_the_old_pod_of_the_same_name_to_go() -> None:
    """A source changed while the download ran: the old pod (same name, other spec hash) is
    deleted, and in a real cluster it terminates for a while. Applying its successor of the
    same name patched the terminating pod, the API server refused the spec change and the
    copy failed, PodRejected. Now the copy waits for the old pod to go."""
    spec = api.parse_cache_spec(NODE_SPEC)
    name = download_pod(REF, spec, "gpu-1", 1)["metadata"]["name"]
    old = CachePod(name=name, role="fetch", target=_pod("x", "Running").target, node="gpu-1",
                   spec_hash="0ld", attempt=1, phase="Running")
    for pods, deleted in (([old], [name]), ([replace(old, deleting=True)], [])):
        d = Decision(status={})
        copy = copy_state(REF, spec, "gpu-1", pods, {}, {}, False, NOW, d)
        assert not d.create and d.delete == deleted and d.requeue_after == 1.0
        assert (copy.phase, copy.reason) == ("Pending", "Starting") and name in copy.message
    failed = {"phase": "Failed", "reason": "DownloadFailed", "observedGeneration": 1,
              "specHash": "0ld", "nodes": [{"name": "gpu-1", "phase": "Failed"}]}
    d = Decision(status={})
    copy_state(REF, spec, "gpu-1", [replace(old, deleting=True)], {}, failed, False, NOW, d, True)
    assert not d.create  # a fix to a failed cache waits too
    d = Decision(status={})
    copy_state(REF, spec, "gpu-1", [], {}, {}, False, NOW, d)
    assert [p["metadata"]["name"] for p in d.create] == [name]  # once it is gone


@pytest.mark.parametrize(("pod_status", "says"), [
    ({"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/7 nodes are available: pod has unbound immediate PersistentVolumeClaims."}]},
     "Unschedulable: 0/7 nodes are available: pod has unbound immediate PersistentVolumeClaims."),
    ({"phase": "Pending", "containerStatuses": [{"name": "fetch", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"nope:1\""}}}]},
     "ImagePullBackOff: Back-off pulling image \"nope:1\""),
    ({"phase": "Pending", "containerStatuses": [{"name": "fetch", "state": {"waiting": {
        "reason": "CreateContainerConfigError", "message": "secret \"s3\" not found"}}}]},
     "CreateContainerConfigError: secret \"s3\" not found"),
])
def test_a_download_pod_that_cannot_start_says_why(pod_status: dict[str, Any],
                                                    says: str) -> None:
    """A download pod the scheduler cannot place (its claim's storage class does not exist) or
    whose image or Secret is missing stayed Pending, and the cache said only 'Downloading:
    attempt 1, pod ... (not running yet)', forever. Now the reason is PodPending with the
    scheduler's or the kubelet's words."""
    from kubemaas_operator.modelcache.status import pod_waiting
    assert pod_waiting(pod_status) == says
    pod = _pod("p1", "Pending", node=None, waiting=pod_waiting(pod_status))
    status, d = _run(PVC_SPEC, [None], [pod])
    assert (status["phase"], status["reason"]) == ("Downloading", "PodPending")
    assert status["message"] == f"attempt 1, pod p1 cannot start: {says}" and not d.create
    assert pod_waiting({"phase": "Pending", "containerStatuses": [{"state": {"waiting": {
        "reason": "ContainerCreating"}}}]}) == ""
    assert pod_waiting({"phase": "Running"}) == ""


def test_mount_on_two_ready_copies_has_one_node_per_match_field() -> None:
    """A node cache Ready on two nodes: the pods got `matchFields metadata.name In [gpu-1,
    gpu-2]`, which the API server refuses ('must be only one value when operator is In or NotIn
    for node field selector'): the model's Deployment was Rejected (seen on the testbed). Now
    each required term becomes one term per node, each with a single value, still ANDed with
    what the term asked for."""
    cache = {"metadata": {"generation": 1}, "spec": {"storage": {"type": "node"}},
             "status": {"observedGeneration": 1, "phase": "Ready", "path": "/c/ml/llama",
                        "nodes": [{"name": "gpu-2", "phase": "Ready"},
                                  {"name": "gpu-1", "phase": "Ready"}]}}
    dep = _deployment()
    gpu = {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["H100", "A100"]}
    dep["spec"]["template"]["spec"]["affinity"] = {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [gpu]}]}}}
    mount_cache(dep, mount_status("llama", cache))
    terms = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [gpu], "matchFields": [
        {"key": "metadata.name", "operator": "In", "values": [node]}]} for node in ("gpu-1",
                                                                                    "gpu-2")]


def test_a_finished_download_over_the_size_limit_fails_too() -> None:
    """spec.sizeLimit was checked only against progress lines: a download that finished
    between two reads (or whose log cannot be read) with 4600 bytes under a 1 KiB limit made
    the copy Ready, past the limit the node budget counts on. Now its report is held to the
    same rule: Failed, DiskFull."""
    raw = {**NODE_SPEC, "sizeLimit": "1Ki"}
    spec = api.parse_cache_spec(raw)
    done = replace(_pod("p1", "Succeeded", exit_code=0, message=json.dumps(REPORT)),
                   spec_hash=spec_hash(spec))
    status, d = _run(raw, ["gpu-1"], [done])
    assert (status["phase"], status["reason"]) == ("Failed", "DiskFull") and not d.create
    assert "4600 bytes, more than spec.sizeLimit (1024)" in status["message"]
    roomy = {**NODE_SPEC, "sizeLimit": "1Mi"}
    done = replace(done, spec_hash=spec_hash(api.parse_cache_spec(roomy)))
    assert _run(roomy, ["gpu-1"], [done])[0]["phase"] == "Ready"


def test_new_files_in_the_cache_roll_the_model() -> None:
    """The cache's source changed while a model ran on it: the cache downloaded the new files
    and turned Ready again, but the model's pod template was the same, so its pods kept
    serving the model they had loaded from the old files, Ready. Now the template carries
    the cache's status.specHash: new files, a new template, a rollout."""
    def template(spec_hash_: str) -> dict[str, Any]:
        cache = {"metadata": {"generation": 2}, "spec": {"storage": {"type": "node"}},
                 "status": {"observedGeneration": 2, "phase": "Ready", "path": "/c/ml/llama",
                            "specHash": spec_hash_, "nodes": [{"name": "gpu-1",
                                                               "phase": "Ready"}]}}
        dep = _deployment()
        mount_cache(dep, mount_status("llama", cache))
        return dict(dep["spec"]["template"])
    old, new = template("1111"), template("2222")
    assert old["metadata"]["annotations"] == {"serving.kubemaas.io/model-cache-files": "1111"}
    assert old != new and old["spec"] == new["spec"]


def test_the_window_a_cache_pod_reports_reaches_the_status_model() -> None:
    from kubemaas_operator.modelcache.progress import model_shape

    report = {**REPORT, "model": {**REPORT["model"], "slidingWindow": 4096,
                                  "slidingWindowLayers": 2}}
    r = parse_report(json.dumps(report), 0)
    assert r is not None
    assert (r.model["slidingWindow"], r.model["slidingWindowLayers"]) == (4096, 2)
    # below the CRD's minimum of 1 (the API server would refuse the whole status): dropped
    assert model_shape({"slidingWindow": 0, "slidingWindowLayers": 0, "numLayers": 2}) == {
        "numLayers": 2}
