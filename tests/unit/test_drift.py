"""drift(): desired contained in observed, modulo canonical quantities and named lists."""

from __future__ import annotations

from kubemaas_operator.drift import drift
from kubemaas_operator.quantity import parse_quantity, same_quantity

WANT = {"spec": {"replicas": 2, "template": {"spec": {"containers": [
    {"name": "runtime", "image": "img:1", "resources": {"requests": {"cpu": "1000m"}},
     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]}}}}


def have(**changes: object) -> dict[str, object]:
    import copy

    obj = copy.deepcopy(WANT)
    container = obj["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    container.update(changes)
    container.setdefault("terminationMessagePath", "/dev/termination-log")  # a server default
    return obj


def test_superset_is_no_drift() -> None:
    assert drift(WANT, have()) is None


def test_canonical_quantity_is_no_drift() -> None:
    assert drift(WANT, have(resources={"requests": {"cpu": "1"}})) is None


def test_hand_edit_is_drift() -> None:
    found = drift(WANT, have(image="evil:2"))
    assert found is not None and "image" in found and "evil:2" in found


def test_env_matched_by_name_not_position() -> None:
    reordered = have(env=[{"name": "C", "value": "3"}, {"name": "B", "value": "2"},
                          {"name": "A", "value": "1"}])
    assert drift(WANT, reordered) is None
    assert drift(WANT, have(env=[{"name": "A", "value": "1"}])) is not None


def test_missing_field_is_drift() -> None:
    assert drift({"spec": {"replicas": 2}}, {"spec": {}}) == ".spec.replicas: missing"


def test_quantities() -> None:
    assert parse_quantity("4Gi") == 4 * 2**30
    assert same_quantity("0.5", "500m") and same_quantity(2, "2") and same_quantity("1k", "1000")
    assert not same_quantity("1Gi", "1G") and not same_quantity("x", "x1")


def test_an_empty_value_the_api_server_omitted_is_no_drift() -> None:
    want = {"env": [{"name": "KUBEMAAS_MODEL_FORMAT", "value": ""}, {"name": "A", "value": "1"}]}
    have = {"env": [{"name": "KUBEMAAS_MODEL_FORMAT"}, {"name": "A", "value": "1"}]}
    assert drift(want, have) is None
    assert drift({"env": [{"name": "A", "value": "1"}]}, {"env": [{"name": "A"}]}) == \
        ".env[name=A].value: missing"
