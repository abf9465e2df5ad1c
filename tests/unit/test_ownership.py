"""A child about to be created whose name is another resource's object (model X-stable beside
model X's track Service X-stable) is reported, not taken over; a stale child of a deleted model
of the same name, or an object nobody controls, is not a conflict."""

from __future__ import annotations

from typing import Any

from kubemaas_operator.ownership import conflict_message, foreign_owner, may_clash


def _obj(name: str, owner: str | None, uid: str = "", controller: bool = True) -> dict[str, Any]:
    refs = [] if owner is None else [{"apiVersion": "serving.kubemaas.io/v1alpha1",
                                      "kind": "ModelDeployment", "name": owner,
                                      "uid": uid or f"uid-{owner}", "controller": controller}]
    return {"kind": "Service", "metadata": {"name": name, "ownerReferences": refs}}


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


def test_only_suffixed_names_are_read_first() -> None:
    assert may_clash(_obj("m-stable", "m")) and may_clash(_obj("m-canary", "m"))
    assert not may_clash(_obj("m", "m"))
