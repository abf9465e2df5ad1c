"""floor.py: the autoscaling floor's decisions (pure)."""

from __future__ import annotations

from typing import Any

from kubemaas_operator.api import parse_spec
from kubemaas_operator.floor import hand_over, raise_to_floor, starts_at_zero
from kubemaas_operator.render import replicas_manifest
from kubemaas_operator.render.autoscaler import choose


def spec(**extra: Any) -> Any:
    return parse_spec({"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
                       "runtime": {"image": "img", "resources": {"cpu": "1"}}, **extra})


AUTO = {"autoscaling": {"minReplicas": 3, "maxReplicas": 6}}


def test_a_new_autoscaled_deployment_is_raised_to_min_replicas() -> None:
    assert raise_to_floor(spec(**AUTO), 1) == 3  # the API server's default
    assert raise_to_floor(spec(**AUTO), None) == 3
    assert raise_to_floor(spec(**AUTO), 3) is None
    assert raise_to_floor(spec(**AUTO), 5) is None  # the autoscaler's business
    assert raise_to_floor(spec(replicas=1), 1) is None  # no autoscaling: spec.replicas rules


def test_switching_autoscaling_on_hands_the_count_over() -> None:
    # Before the autoscaler exists, the operator may own replicas from spec.replicas: pin the
    # current count (within min..max) so that applying without it does not reset it to 1.
    assert hand_over(spec(**AUTO), 4, autoscaler_observed=False) == 4
    assert hand_over(spec(**AUTO), 1, autoscaler_observed=False) == 3
    assert hand_over(spec(**AUTO), 9, autoscaler_observed=False) == 6
    assert hand_over(spec(**AUTO), 4, autoscaler_observed=True) is None
    assert hand_over(spec(**AUTO), None, autoscaler_observed=False) is None  # not created yet
    assert hand_over(spec(replicas=2), 2, autoscaler_observed=False) is None


def test_the_floor_applies_nothing_but_replicas() -> None:
    assert replicas_manifest("m", "ns", 3) == {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "m", "namespace": "ns"}, "spec": {"replicas": 3}}


def test_a_model_its_engine_may_hold_at_zero_is_created_at_zero() -> None:
    at_zero = spec(autoscaling={"signal": "queue", "target": 2, "minReplicas": 0,
                                "maxReplicas": 2})
    keda = choose(at_zero.autoscaling, cpu_request=True, keda=True, prometheus="http://p:9090")
    assert keda.engine == "KEDA" and starts_at_zero(at_zero, keda)
    # without KEDA the CPU fallback never goes below 1: created as usual, raised to 1
    hpa = choose(at_zero.autoscaling, cpu_request=True, keda=False, prometheus="http://p:9090")
    assert not starts_at_zero(at_zero, hpa)
    assert not starts_at_zero(spec(**AUTO), choose(spec(**AUTO).autoscaling, cpu_request=True,
                                                   keda=True, prometheus="http://p:9090"))
    assert not starts_at_zero(spec(replicas=1), None)
