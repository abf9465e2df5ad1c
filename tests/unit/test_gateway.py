"""The HTTPRoute traffic split (Gateway API): the weights rollout.py computes at each canary
step, the Services and HTTPRoute render.py makes, the spec and settings that choose a Gateway
(pure)."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from tests.unit.test_rollout import GOOD, NOW, RAW, dep, pods
from tests.unit.test_rollout_canary import CANARY_RAW, canary_pods

from kubemaas_operator.api import CanaryStep, GatewayRef, SpecError, parse_spec
from kubemaas_operator.canary import HTTP_ROUTE, ready_share, route_weight
from kubemaas_operator.config import Settings, SettingsError
from kubemaas_operator.drift import drift
from kubemaas_operator.render import (
    SPEC_HASH,
    RenderContext,
    RenderError,
    render_gateway,
    track_service_name,
)
from kubemaas_operator.rollout import plan
from kubemaas_operator.routes import gateway_for

STEPS = (CanaryStep(10, 3), CanaryStep(50, 3), CanaryStep(100))
CTX = RenderContext(name="m", namespace="models", uid="u-1")


def test_a_step_weight_reaches_the_route_once_its_canary_replicas_are_ready() -> None:
    assert route_weight(STEPS, 1, 10, 0, 10) == 0  # nothing Ready on the canary yet
    assert route_weight(STEPS, 1, 10, 1, 9) == 10
    assert route_weight(STEPS, 2, 10, 3, 7) == 10  # step 2 wants 5 Ready: still 10
    assert route_weight(STEPS, 2, 10, 5, 5) == 50
    assert route_weight(STEPS, 3, 10, 7, 3) == 50
    assert route_weight(STEPS, 3, 10, 10, 0) == 100
    # a stable side with nothing Ready leaves the canary everything (one replica at 10%)
    assert route_weight(STEPS, 1, 1, 1, 0) == 100
    assert ready_share(1, 9) == 10 and ready_share(0, 0) == 0


def _route(p: Any) -> tuple[int, str]:
    return p.canary_weight, p.status["canary"]["trafficSplit"]


def test_plan_gives_the_route_90_10_then_50_50_then_0_100_and_100_0_when_done() -> None:
    raw = {**RAW, "replicas": 10, "rollout": {"canary": {"steps": [
        {"weight": 10, "pauseSeconds": 5}, {"weight": 50, "pauseSeconds": 5}, {"weight": 100}]}}}
    s = parse_spec(raw)
    good = {**GOOD, "stableSpec": raw}
    p = plan(s, raw, "bbb", dep("aaa", 10, 10, 10), pods("aaa", 10), 10, 0, good, NOW,
             HTTP_ROUTE)
    assert _route(p) == (0, "HTTPRoute")
    p = plan(s, raw, "bbb", dep("aaa", 9, 9, 9), canary_pods(9, 1), 10, 0, p.status, NOW,
             HTTP_ROUTE)
    assert _route(p) == (10, "HTTPRoute") and p.status["canary"]["trafficPercent"] == 10
    assert "traffic 10% by HTTPRoute weights" in p.status["message"]
    t = NOW + timedelta(seconds=6)
    p = plan(s, raw, "bbb", dep("aaa", 9, 9, 9), canary_pods(9, 1), 10, 0, p.status, t,
             HTTP_ROUTE)
    p = plan(s, raw, "bbb", dep("aaa", 7, 7, 7), canary_pods(7, 3), 10, 0, p.status, t,
             HTTP_ROUTE)
    assert p.status["canary"]["step"] == 2 and p.canary_weight == 10  # 3 of 5 Ready
    p = plan(s, raw, "bbb", dep("aaa", 5, 5, 5), canary_pods(5, 5), 10, 0, p.status, t,
             HTTP_ROUTE)
    assert p.canary_weight == 50
    t2 = t + timedelta(seconds=6)
    p = plan(s, raw, "bbb", dep("aaa", 5, 5, 5), canary_pods(5, 5), 10, 0, p.status, t2,
             HTTP_ROUTE)
    p = plan(s, raw, "bbb", dep("aaa", 0, 0, 0), canary_pods(0, 10), 10, 0, p.status, t2,
             HTTP_ROUTE)
    assert p.status["canary"]["step"] == 3 and p.canary_weight == 100
    assert "promote to 2" in p.status["message"]
    promoted = parse_spec({**raw, "rollout": {"canary": {**raw["rollout"]["canary"],
                                                         "promote": 2}}})
    # hand-over: the route follows the Ready replicas, away from the shrinking canary
    handed = [*pods("bbb", 4), *canary_pods(0, 6)]
    p = plan(promoted, raw, "bbb", dep("bbb", 4, 4, 4), handed, 10, 0, p.status, t2, HTTP_ROUTE)
    # 4 stable Ready: the canary keeps 5 of its 6 (one at a time), the route 5 of 9 Ready
    assert p.canary_replicas == 5 and p.canary_weight == 56
    p = plan(promoted, raw, "bbb", dep("bbb", 10, 10, 10), pods("bbb", 10), 10, 0, p.status,
             t2, HTTP_ROUTE)
    assert p.canary_replicas is None and p.canary_weight == 0 and "canary" not in p.status


def test_abort_and_rollback_send_everything_back_to_stable() -> None:
    s = parse_spec(CANARY_RAW)
    good = {**GOOD, "stableSpec": CANARY_RAW}
    p = plan(s, CANARY_RAW, "bbb", dep("aaa", 9, 9, 9), canary_pods(9, 1), 10, 0, good, NOW,
             HTTP_ROUTE)
    assert p.canary_weight == 10
    aborted = parse_spec({**CANARY_RAW, "rollout": {"canary": {
        **CANARY_RAW["rollout"]["canary"], "abort": True}}})
    a = plan(aborted, CANARY_RAW, "bbb", dep("aaa", 9, 9, 9), canary_pods(9, 1), 10, 0,
             p.status, NOW, HTTP_ROUTE)
    assert a.canary_weight == 0 and a.status["canary"]["trafficPercent"] == 0
    crashed = [*pods("aaa", 9), *canary_pods(0, 1)]
    crashed[-1] = type(crashed[-1])(name="c", phase="Running", revision="bbb", track="canary",
                                    waiting_reason="CrashLoopBackOff")
    r = plan(s, CANARY_RAW, "bbb", dep("aaa", 9, 9, 9), crashed, 10, 0, p.status, NOW,
             HTTP_ROUTE)
    assert r.rolled_back and r.canary_weight == 0
    # the ready-replica split is unchanged and says so
    q = plan(s, CANARY_RAW, "bbb", dep("aaa", 9, 9, 9), canary_pods(9, 1), 10, 0, good, NOW)
    assert q.status["canary"]["trafficSplit"] == "ReadyReplicas"
    assert "by ready replicas" in q.status["message"]


def test_render_gateway_services_and_weights() -> None:
    s = parse_spec({**RAW, "serving": {"port": 9000, "gateway": {"name": "gw"}}})
    assert s.serving.gateway == GatewayRef(name="gw")
    stable, canary, route = render_gateway(s, CTX, s.serving.gateway, 10)
    assert (stable["metadata"]["name"], canary["metadata"]["name"]) == ("m-stable", "m-canary")
    assert stable["spec"]["selector"]["serving.kubemaas.io/track"] == "main"
    assert canary["spec"]["selector"]["serving.kubemaas.io/track"] == "canary"
    assert stable["spec"]["ports"][0]["port"] == 9000
    for child in (stable, canary, route):
        assert child["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubemaas"
        assert child["metadata"]["namespace"] == "models"
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io",
                                            "kind": "Gateway", "name": "gw",
                                            "namespace": "models"}]
    rule = route["spec"]["rules"][0]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v2/models/m"}}]
    assert [(b["name"], b["port"], b["weight"]) for b in rule["backendRefs"]] == [
        ("m-stable", 9000, 90), ("m-canary", 9000, 10)]
    assert "hostnames" not in route["spec"]
    # only the route changes with the weight
    again = render_gateway(s, CTX, s.serving.gateway, 50)
    hashes = [[c["metadata"]["annotations"][SPEC_HASH] for c in r]
              for r in ((stable, canary, route), again)]
    assert hashes[0][:2] == hashes[1][:2] and hashes[0][2] != hashes[1][2]
    with pytest.raises(RenderError):
        render_gateway(s, CTX, s.serving.gateway, 101)


def test_hostnames_route_every_path_and_another_namespace() -> None:
    s = parse_spec({**RAW, "model": {**RAW["model"], "name": "resnet"}, "serving": {
        "gateway": {"name": "gw", "namespace": "infra", "hostnames": ["m.example.com"]}}})
    route = render_gateway(s, CTX, s.serving.gateway, 0)[2]
    assert route["spec"]["hostnames"] == ["m.example.com"]
    assert route["spec"]["parentRefs"][0]["namespace"] == "infra"
    assert route["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/"
    weights = [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]]
    assert weights == [100, 0]
    plain = parse_spec({**RAW, "model": {**RAW["model"], "name": "resnet"}})
    assert render_gateway(plain, CTX, GatewayRef("gw", "infra"), 0)[2]["spec"]["rules"][0][
        "matches"][0]["path"]["value"] == "/v2/models/resnet"


def test_the_api_server_defaults_do_not_count_as_drift() -> None:
    s = parse_spec({**RAW, "serving": {"gateway": {"name": "gw"}}})
    route = render_gateway(s, CTX, s.serving.gateway, 10)[2]
    have = copy.deepcopy(route)
    for ref in have["spec"]["rules"][0]["backendRefs"]:
        ref.update({"group": "", "kind": "Service"})
    have["spec"]["rules"][0]["timeouts"] = {}
    have["status"] = {"parents": []}
    assert drift(route, have) is None
    have["spec"]["rules"][0]["backendRefs"][1]["weight"] = 50
    assert drift(route, have) is not None


def test_long_names_stay_dns_labels() -> None:
    name = "m" * 63
    for track in ("stable", "canary"):
        out = track_service_name(name, track)
        assert len(out) <= 63 and out.endswith(f"-{track}")
    assert track_service_name("m" * 62, "stable") != track_service_name("m" * 61, "stable")


@pytest.mark.parametrize(("gateway", "words"), [
    ({}, "name: is required"),
    ({"name": "Bad_Name"}, "not a valid Gateway name"),
    ({"name": "gw", "namespace": "No"}, "not a valid namespace"),
    ({"name": "gw", "hostnames": ["http://x"]}, "not a hostname"),
])
def test_gateway_spec_validation(gateway: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError, match=words):
        parse_spec({**RAW, "serving": {"gateway": gateway}})


def test_operator_default_gateway() -> None:
    settings = Settings.from_env({"KUBEMAAS_OPERATOR_GATEWAY": "infra/shared",
                                  "KUBEMAAS_OPERATOR_NAMESPACE": "x"})
    assert settings.default_gateway() == ("infra", "shared")
    assert gateway_for(parse_spec(RAW), settings) == GatewayRef(name="shared", namespace="infra")
    own = parse_spec({**RAW, "serving": {"gateway": {"name": "mine"}}})
    assert gateway_for(own, settings) == GatewayRef(name="mine")
    assert gateway_for(parse_spec(RAW), Settings(namespace="x")) is None
    for bad in ("shared", "/shared", "infra/", "a/b/c"):
        with pytest.raises(SettingsError, match="KUBEMAAS_OPERATOR_GATEWAY"):
            Settings.from_env({"KUBEMAAS_OPERATOR_GATEWAY": bad,
                               "KUBEMAAS_OPERATOR_NAMESPACE": "x"})
