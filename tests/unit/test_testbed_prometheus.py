"""The testbed's Prometheus configuration and KEDA's metrics API registration (pure parts of
hack/kubemaas_testbed/prometheus.py and keda.py): what may be scraped, with which labels, and
where the aggregator sends external.metrics.k8s.io."""

from __future__ import annotations

import base64
import ipaddress
import re
from pathlib import Path

import pytest

from kubemaas_testbed import keda, pki, prometheus

SUBNET = ipaddress.IPv4Network("10.250.3.0/24")


def test_the_address_filter_keeps_only_the_bridge() -> None:
    regex = re.compile(f"^(?:{prometheus.subnet_regex(SUBNET)})$")  # Prometheus anchors it
    assert regex.match("10.250.3.17:8080")
    for outside in ("10.64.0.5:8080",  # a kwok pod
                    "10.96.0.10:8080",  # a ClusterIP
                    "10.250.30.1:8080", "10.250.4.2:8080", "110.250.3.2:8080",
                    "10.250.3.17"):
        assert not regex.match(outside), outside
    with pytest.raises(ValueError):
        prometheus.subnet_regex(ipaddress.IPv4Network("10.250.0.0/20"))


def test_pods_of_the_real_node_only_with_servicemonitor_labels() -> None:
    conf = prometheus.config(Path("/k"), "real-3", SUBNET, query_log=Path("/q.log"))
    assert conf["global"]["scrape_interval"] == "2s"
    assert conf["global"]["query_log_file"] == "/q.log"
    (job,) = conf["scrape_configs"]
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod" and sd["kubeconfig_file"] == "/k"
    (sel,) = sd["selectors"]
    assert sel["field"] == "spec.nodeName=real-3"
    assert "app.kubernetes.io/managed-by=kubemaas" in sel["label"]
    keep = job["relabel_configs"][0]
    assert keep == {"source_labels": ["__address__"], "action": "keep",
                    "regex": prometheus.subnet_regex(SUBNET)}
    targets = {r.get("target_label"): r["source_labels"][0] for r in job["relabel_configs"]}
    assert targets["namespace"] == "__meta_kubernetes_namespace"
    assert targets["service"] == "__meta_kubernetes_pod_label_app_kubernetes_io_instance"


def test_static_targets_are_loopback_only() -> None:
    conf = prometheus.config(Path("/k"), None, None, static_targets=["127.0.0.1:9100"])
    (job,) = conf["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9100"]}] and job["honor_labels"]
    for bad in ("10.96.0.10:80", "localhost:9100", "127.0.0.1"):
        with pytest.raises(ValueError):
            prometheus.config(Path("/k"), None, None, static_targets=[bad])
    with pytest.raises(ValueError):  # a node without its subnet would scrape unfiltered
        prometheus.config(Path("/k"), "real-3", None)


def test_metrics_api_goes_to_localhost_with_our_ca() -> None:
    svc, api, role, binding = keda.metrics_api_manifests(6443, b"CA PEM")
    assert svc["spec"] == {"type": "ExternalName", "externalName": "localhost",
                           "ports": [{"name": "https", "port": 6443}]}
    assert api["metadata"]["name"] == "v1beta1.external.metrics.k8s.io"
    assert api["spec"]["service"] == {"name": keda.ADAPTER_PROCESS,
                                      "namespace": keda.NAMESPACE, "port": 6443}
    assert base64.b64decode(api["spec"]["caBundle"]) == b"CA PEM"
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": "horizontal-pod-autoscaler",
                                    "namespace": "kube-system"}]
    assert role["rules"][0]["apiGroups"] == ["external.metrics.k8s.io"]


def test_aggregation_flags_name_the_front_proxy_files() -> None:
    flags = dict(f.removeprefix("--").split("=", 1) for f in pki.aggregation_flags(Path("/p")))
    assert flags["requestheader-client-ca-file"] == "/p/front-proxy/ca.crt"
    assert flags["proxy-client-cert-file"] == "/p/front-proxy/front-proxy-client.crt"
    assert flags["requestheader-allowed-names"] == "front-proxy-client"
