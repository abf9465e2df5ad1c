"""A child about to be created whose name is another resource's object (model X-stable beside
model X's track Service X-stable) is reported, not taken over; a stale child of a deleted model
of the same name, or an uncontrolled object kubemaas labelled (an orphaned child), is not a
conflict; an object nobody controls that kubemaas did not make (a Helm chart's InferencePool of
the model's name) is."""

from __future__ import annotations

from typing import Any

from kubemaas_operator.ownership import UNMANAGED, conflict_message, foreign_owner


def _obj(name: str, owner: str | None, uid: str = "", controller: bool = True,
         ours: bool = True, kind: str = "Service") -> dict[str, Any]:
    refs = [] if owner is None else [{"apiVersion": "serving.kubemaas.io/v1alpha1",
                                      "kind": "ModelDeployment", "name": owner,
                                      "uid": uid or f"uid-{owner}", "controller": controller}]
    labels = {"app.kubernetes.io/managed-by": "kubemaas"} if ours else {}
    return {"kind": kind, "metadata": {"name": name, "ownerReferences": refs, "labels": labels}}


def test_another_models_object_is_foreign() -> None:
    child = _obj("r-gw-stable", "r-gw-stable")
    assert foreign_owner(child, _obj("r-gw-stable", "r-gw")) == "ModelDeployment r-gw"
    msg = conflict_message(child, "ModelDeployment r-gw")
    assert "Service r-gw-stable" in msg and "ModelDeployment r-gw" in msg


def test_ours_a_deleted_namesakes_and_uncontrolled_objects_are_not() -> None:
    child = _obj("m-canary", "m", uid="new")
    assert foreign_owner(child, _obj("m-canary", "m", uid="new")) is None
    assert foreign_owner(child, _obj("m-canary", "m", uid="old")) is None  # recreated model
    assert foreign_owner(child, _obj("m-canary", None)) is None
    assert foreign_owner(child, _obj("m-canary", "x", controller=False)) is None


def test_an_uncontrolled_object_kubemaas_did_not_make_is_foreign() -> None:
    child = _obj("llama", "llama", kind="InferencePool")
    helm = _obj("llama", None, ours=False, kind="InferencePool")
    assert foreign_owner(child, helm) == UNMANAGED
    assert foreign_owner(child, _obj("llama", "x", controller=False, ours=False)) == UNMANAGED
    msg = conflict_message(child, UNMANAGED)
    assert "InferencePool llama" in msg and "not made by kubemaas" in msg and "left alone" in msg
