"""The testbed's statically bound host volume: the volume and its claim name each other."""

from __future__ import annotations

from kubemaas_testbed.node_config import LABEL
from kubemaas_testbed.volumes import bound_host_volume


def test_the_volume_and_its_claim_are_bound_to_each_other() -> None:
    pv, claim = bound_host_volume("pv-1", "/srv/models", "ns", "models")
    assert pv["spec"]["claimRef"] == {"namespace": "ns", "name": "models"}
    assert claim["metadata"] == {"name": "models", "namespace": "ns"}
    assert claim["spec"]["volumeName"] == "pv-1"
    # no storage class on either side: the binding is static, nothing provisions
    assert pv["spec"]["storageClassName"] == claim["spec"]["storageClassName"] == ""
    assert pv["spec"]["hostPath"] == {"path": "/srv/models", "type": "Directory"}
    assert pv["spec"]["accessModes"] == claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert "nodeAffinity" not in pv["spec"]


def test_a_writable_volume_on_the_real_node() -> None:
    pv, claim = bound_host_volume("pv-2", "/srv/cache", "ns", "weights", writable=True,
                                  on_real_node=True)
    assert pv["spec"]["accessModes"] == claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (term,) = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": LABEL, "operator": "In", "values": ["true"]}]
