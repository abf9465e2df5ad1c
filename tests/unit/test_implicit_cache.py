"""spec.model.autoCache: the model asks for a ModelCache of its own URI. The parse and its
errors, the cache key, which cache a model gets (created, shared, someone's, released), the spec
the model is then reconciled with, and the CRD's copy of the ModelCache's schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_operator.api import parse_spec
from kubemaas_operator.api.fields import SpecError
from kubemaas_operator.api.model import CACHE_URI, parse_model
from kubemaas_operator.modelcache import implicit
from kubemaas_operator.modelcache.mount import cache_wait, mount_status

CRDS = Path(__file__).resolve().parents[2] / "crds"
NODE = {"type": "node", "node": {"nodeSelector": {"pool": "gpu"}}}
HF = {"uri": "hf://acme/tiny-llama", "format": "hf", "credentialsSecretRef": {"name": "hf-tok"},
      "autoCache": {"revision": "abc123", "include": ["*.json", "*.safetensors"],
                    "storage": NODE, "download": {"env": [{"name": "HF_ENDPOINT",
                                                           "value": "http://mirror"}]}}}
A = implicit.Owner(name="a", uid="uid-a")
B = implicit.Owner(name="b", uid="uid-b")


def _model(**changes: Any) -> dict[str, Any]:
    m = copy.deepcopy(HF)
    for key, value in changes.items():
        if value is None:
            m.pop(key, None)
        else:
            m[key] = value
    return m


def _auto(**changes: Any) -> dict[str, Any]:
    a = copy.deepcopy(HF["autoCache"])
    a.update(changes)
    return {k: v for k, v in a.items() if v is not None}


def test_parse_auto_cache() -> None:
    m = parse_model(HF)
    assert m.uri == "hf://acme/tiny-llama" and m.credentials_secret_ref is not None
    auto = m.auto_cache
    assert auto is not None and auto.revision == "abc123"
    assert auto.storage.type == "node" and auto.storage.node is not None
    assert auto.storage.node.node_selector == {"pool": "gpu"}
    assert auto.download.env[0].name == "HF_ENDPOINT"
    s3 = parse_model({"uri": "s3://models/affine/", "format": "onnx",
                      "autoCache": {"storage": {"type": "pvc", "pvc": {
                          "storageClassName": "nfs", "size": "10Gi"}}, "sizeLimit": "1Gi"}})
    assert s3.auto_cache is not None and s3.auto_cache.size_limit == 1 << 30


@pytest.mark.parametrize(("model", "path", "words"), [
    (_model(autoCache=None), "spec.model.uri", "downloaded by a model cache"),
    (_model(uri="pvc://claim/m.onnx", credentialsSecretRef=None, autoCache=_auto(revision=None)),
     "spec.model.autoCache", "already local"),
    (_model(uri="file:///models/m.onnx", credentialsSecretRef=None,
            autoCache=_auto(revision=None)), "spec.model.autoCache", "already local"),
    (_model(autoCache=_auto(revision=None)), "spec.model.autoCache.revision", "pin the commit"),
    (_model(uri="s3://bucket/m/", credentialsSecretRef=None), "spec.model.autoCache.revision",
     "only applies to hf://"),
    (_model(uri="s3://b/m/", credentialsSecretRef=None, autoCache=_auto(revision=None)),
     "spec.model.autoCache", "not a source a ModelCache downloads"),
    (_model(autoCache=_auto(storage=None)), "spec.model.autoCache.storage", "is required"),
    (_model(autoCache=_auto(storage={"type": "node", "node": {}})),
     "spec.model.autoCache.storage.node", "nodeSelector and/or nodes"),
    (_model(autoCache=_auto(download={"env": [{"name": "HF_TOKEN", "value": "x"}]})),
     "spec.model.autoCache.download.env[0].name", "set by the operator"),
    (_model(uri="https://h/m.onnx", format="onnx", autoCache=_auto(revision=None)),
     "spec.model.credentialsSecretRef", "only used for s3://"),
])
def test_parse_refuses(model: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_model(model)
    assert err.value.path == path and words in err.value.message, str(err.value)


def test_cache_and_auto_cache_together_are_refused() -> None:
    with pytest.raises(SpecError) as err:
        parse_model({"cache": "weights", "format": "hf", "autoCache": HF["autoCache"]})
    assert "not both" in str(err.value)


def test_key_ignores_order_and_download_settings() -> None:
    a = parse_model(HF)
    b = parse_model(_model(autoCache=_auto(include=["*.safetensors", "*.json"],
                                           download={"parallel": 2})))
    assert implicit.model_key(a) == implicit.model_key(b)
    for other in (_model(autoCache=_auto(revision="def456")),
                  _model(credentialsSecretRef={"name": "other"}),
                  _model(autoCache=_auto(storage={"type": "node", "node": {"nodes": ["n1"]}}))):
        assert implicit.model_key(parse_model(other)) != implicit.model_key(a)


def test_cache_names() -> None:
    key = "0123456789abcdef"
    assert implicit.cache_name("hf://acme/tiny-llama", key) == "tiny-llama-0123456789"
    assert implicit.cache_name("s3://models/affine/", key) == "affine-0123456789"
    assert implicit.cache_name("https://h:8080/m/Model.ONNX", key) == "model-onnx-0123456789"
    assert implicit.cache_name("s3://bucket", key) == "model-0123456789"
    assert len(implicit.cache_name("https://h/" + "x" * 300, key)) <= 51


def _created(owner: implicit.Owner = A) -> dict[str, Any]:
    p = implicit.plan("ml", owner, parse_model(HF), HF["autoCache"], {})
    assert p.create is not None
    return p.create


def test_first_model_creates_the_cache() -> None:
    p = implicit.plan("ml", A, parse_model(HF), HF["autoCache"], {})
    assert p.create is not None and p.implicit and not p.adopt and p.release == ()
    body = p.create
    assert body["metadata"]["name"] == p.name and p.name.startswith("tiny-llama-")
    assert body["metadata"]["labels"][implicit.IMPLICIT_LABEL] == "true"
    assert body["metadata"]["annotations"][implicit.CREATED_FOR_ANNOTATION] == "a"
    assert body["metadata"]["ownerReferences"] == [{
        "apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment", "name": "a",
        "uid": "uid-a"}]
    assert body["spec"]["source"] == {"uri": "hf://acme/tiny-llama", "revision": "abc123",
                                      "secretName": "hf-tok",
                                      "include": ["*.json", "*.safetensors"]}
    assert body["spec"]["storage"] == NODE and body["spec"]["download"]["env"][0]["name"] == \
        "HF_ENDPOINT"
    # What it creates is a valid ModelCache with the model's key.
    assert implicit.cache_key_of(body) == implicit.model_key(parse_model(HF))


def test_second_model_shares_it() -> None:
    body = _created()
    caches = {body["metadata"]["name"]: body}
    p = implicit.plan("ml", B, parse_model(HF), HF["autoCache"], caches)
    assert p.create is None and p.adopt and p.name == body["metadata"]["name"]
    owned = copy.deepcopy(body)
    owned["metadata"]["ownerReferences"].append(implicit.owner_ref(B))
    again = implicit.plan("ml", B, parse_model(HF), HF["autoCache"], {p.name: owned})
    assert not again.adopt and again.create is None
    assert implicit.released(owned, "uid-a") == [implicit.owner_ref(B)]


def test_someone_elses_matching_cache_is_used_not_owned() -> None:
    theirs = {"metadata": {"name": "llama-weights"}, "spec": {
        "source": {"uri": "hf://acme/tiny-llama", "revision": "abc123", "secretName": "hf-tok",
                   "include": ["*.safetensors", "*.json"]},
        "storage": {"type": "node", "node": {"nodeSelector": {"pool": "gpu"}}}}}
    p = implicit.plan("ml", A, parse_model(HF), HF["autoCache"], {"llama-weights": theirs})
    assert p.name == "llama-weights" and not p.implicit and not p.adopt and p.create is None
    other = copy.deepcopy(theirs)
    other["spec"]["source"]["revision"] = "zzz"
    p = implicit.plan("ml", A, parse_model(HF), HF["autoCache"], {"llama-weights": other})
    assert p.create is not None  # not the same files: a cache of its own


def test_a_model_that_stops_asking_releases_what_it_owns() -> None:
    body = _created()
    name = body["metadata"]["name"]
    p = implicit.plan("ml", A, None, None, {name: body})
    assert p.release == (name,) and not p.name
    moved = _model(autoCache=_auto(revision="def456"))
    p = implicit.plan("ml", A, parse_model(moved), moved["autoCache"], {name: body})
    assert p.create is not None and p.name != name and p.release == (name,)
    # B owns nothing there: nothing to release.
    assert implicit.plan("ml", B, None, None, {name: body}).release == ()
    # A cache someone created is never released (never owned).
    theirs = copy.deepcopy(body)
    del theirs["metadata"]["labels"][implicit.IMPLICIT_LABEL]
    assert implicit.plan("ml", A, None, None, {name: theirs}).release == ()


def test_effective_spec_is_a_named_cache() -> None:
    raw = {"model": HF, "runtime": {"image": "img:1"}}
    view = implicit.effective_spec(raw, "tiny-llama-0123456789")
    assert view["model"] == {"format": "hf", "cache": "tiny-llama-0123456789"}
    assert raw["model"]["uri"] == "hf://acme/tiny-llama"  # the original is untouched
    spec = parse_spec(view)
    assert spec.model.cache == "tiny-llama-0123456789" and spec.model.uri == CACHE_URI
    assert spec.model.auto_cache is None and spec.model.credentials_secret_ref is None


def test_asks_for_and_the_wait() -> None:
    body = _created()
    assert implicit.asks_for({"model": HF}, body)
    assert not implicit.asks_for({"model": _model(autoCache=_auto(revision="x"))}, body)
    assert not implicit.asks_for({"model": {"uri": "s3://b/m.onnx", "format": "onnx"}}, body)
    assert not implicit.asks_for({"model": _model(autoCache=_auto(revision=None))}, body)
    mount = implicit.creating_mount("c", "hf://acme/tiny-llama")
    wait = cache_wait("c", mount)
    assert wait is not None and wait.reason == "CacheNotReady" and wait.phase == "Pending"
    assert "autoCache" in wait.message
    assert mount_status("c", body).reason == "CacheNotReady"


def _props(schema: dict[str, Any]) -> Any:
    """The schema without descriptions (the copy adds some where the ModelCache has none)."""
    if isinstance(schema, dict):
        return {k: _props(v) for k, v in schema.items() if k != "description"}
    if isinstance(schema, list):
        return [_props(v) for v in schema]
    return schema


def test_crd_copies_the_modelcache_schema() -> None:
    (cache_version,) = yaml.safe_load(
        (CRDS / "serving.kubemaas.io_modelcaches.yaml").read_text())["spec"]["versions"]
    (md_version,) = yaml.safe_load(
        (CRDS / "serving.kubemaas.io_modeldeployments.yaml").read_text())["spec"]["versions"]
    cache = cache_version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    auto = md_version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["model"][
        "properties"]["autoCache"]["properties"]
    for name in ("storage", "download", "sizeLimit"):
        assert _props(auto[name]) == _props(cache[name]), name
    source = cache["source"]["properties"]
    for name in ("revision", "include", "exclude"):
        assert _props(auto[name]) == _props(source[name]), name


def test_only_a_cache_the_operator_made_for_the_key_is_adoptable() -> None:
    model = parse_model(HF)
    key = implicit.model_key(model)
    ours = implicit.desired_cache("ns", A, model, HF["autoCache"])
    assert implicit.adoptable(ours, key)
    theirs = copy.deepcopy(ours)  # someone's cache with the name, other files
    theirs["metadata"]["labels"] = {}
    theirs["spec"]["source"]["uri"] = "hf://acme/other"
    assert not implicit.adoptable(theirs, key)
    labelled = copy.deepcopy(theirs)  # even when it copies the label, its files differ
    labelled["metadata"]["labels"] = dict(ours["metadata"]["labels"])
    assert not implicit.adoptable(labelled, key)
    unlabelled = copy.deepcopy(ours)  # the right files, created by a person: used, not owned
    unlabelled["metadata"]["labels"] = {}
    assert not implicit.adoptable(unlabelled, key)
    assert "hf://acme/other" in implicit.name_taken("c", theirs)
    created = implicit.plan("ns", A, model, HF["autoCache"], {})
    assert created.key == key and created.create is not None


def test_a_model_that_names_its_implicit_cache_keeps_it() -> None:
    """A model swapped `uri` + `autoCache` for `cache: <the cache made for it>`: the cache was
    released as if the model had stopped asking, and deleted (held InUse while the model's
    pods ran, the model Degraded, CacheDeleting). Now the cache it names is kept, with its
    reference; another it owns is still released."""
    body = _created()
    name = body["metadata"]["name"]
    other = copy.deepcopy(body)
    other["metadata"]["name"] = "old-0123456789"
    caches = {name: body, "old-0123456789": other}
    assert implicit.plan("ml", A, None, None, caches, named=name).release == ("old-0123456789",)
    assert implicit.plan("ml", A, None, None, caches).release == ("old-0123456789", name)


def test_a_cache_name_no_modelcache_can_have_is_refused() -> None:
    """spec.model.cache took up to 253 characters, but a ModelCache's name is at most 63 (the
    CRD refuses longer ones): a model naming a 64-character cache waited forever, CacheNotFound
    'does not exist in this namespace'. Now the CRD and the parser refuse it."""
    spec = {"model": {"cache": "c" * 64, "format": "onnx"}, "runtime": {"image": "r:1"}}
    with pytest.raises(SpecError, match=r"spec\.model\.cache.*64 characters"):
        parse_spec(spec)
    assert parse_spec({**spec, "model": {"cache": "c" * 63, "format": "onnx"}}).model.cache
    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" /
                          "serving.kubemaas.io_modeldeployments.yaml").read_text())
    model = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["model"]
    assert model["properties"]["cache"]["maxLength"] == 63
