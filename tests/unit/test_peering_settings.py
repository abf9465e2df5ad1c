"""Peering settings (config.py) and the standby flag that follows kopf's pauses (standby.py)."""

from __future__ import annotations

import logging

import pytest

from kubemaas_operator import standby
from kubemaas_operator.config import Settings, SettingsError


def test_standalone_by_default() -> None:
    settings = Settings.from_env({"KUBEMAAS_OPERATOR_NAMESPACE": "ns"})
    assert settings.peering == ""
    assert settings.peering_lifetime_s == 15


def test_peering_settings_from_env() -> None:
    settings = Settings.from_env({"KUBEMAAS_OPERATOR_NAMESPACE": "ns",
                                  "KUBEMAAS_OPERATOR_PEERING": "kubemaas",
                                  "KUBEMAAS_OPERATOR_PRIORITY": "7",
                                  "KUBEMAAS_OPERATOR_PEERING_LIFETIME_S": "20"})
    assert (settings.peering, settings.priority, settings.peering_lifetime_s) == (
        "kubemaas", 7, 20)
    assert settings.effective_priority("pod-a") == 7


def test_lifetime_too_short_is_refused() -> None:
    with pytest.raises(SettingsError, match="PEERING_LIFETIME_S"):
        Settings.from_env({"KUBEMAAS_OPERATOR_NAMESPACE": "ns",
                           "KUBEMAAS_OPERATOR_PEERING_LIFETIME_S": "1"})


def test_default_priority_is_stable_per_identity_and_differs_between_pods() -> None:
    settings = Settings(namespace="ns", peering="kubemaas")
    assert settings.identity({"POD_NAME": "kubemaas-operator-abc"}) == "kubemaas-operator-abc"
    assert settings.identity({"POD_ID": "x", "POD_NAME": "y"}) == "x"
    assert "/" in settings.identity({})  # host/pid outside a pod
    priorities = {settings.effective_priority(f"kubemaas-operator-{i}") for i in range(1000)}
    assert len(priorities) == 1000  # distinct: exactly one replica outranks the others
    assert all(0 <= p < 2**31 for p in priorities)
    assert settings.effective_priority("a") == settings.effective_priority("a")


def test_standby_follows_kopf_pause_messages() -> None:
    """The messages of kopf/_core/engines/peering.py in the pinned kopf version."""
    logger = logging.getLogger(standby.KOPF_PEERING_LOGGER)
    try:
        standby.follow_kopf(peering=True)
        assert standby.paused()  # mandatory peering starts paused, as kopf does
        logger.info("Resuming operations after the pause. Conflicting operators with the "
                    "same priority are gone.")
        assert not standby.paused()
        logger.info("Pausing operations in favour of %s.", ["<Peer b>"])
        assert standby.paused()
        logger.info("Resuming operations after the pause. Conflicting operators with the "
                    "same priority are gone.")
        logger.warning("Pausing all operators, including self: %s", ["<Peer a>"])
        assert standby.paused()
    finally:
        standby.follow_kopf(peering=False)
    assert not standby.paused()


def test_kopf_still_logs_the_messages_standby_follows() -> None:
    import inspect

    from kopf._core.engines import peering

    source = inspect.getsource(peering.process_peering_event)
    assert 'f"Pausing operations in favour of' in source
    assert 'f"Pausing all operators, including self' in source
    assert 'f"Resuming operations after the pause' in source
    assert peering.logger.name == standby.KOPF_PEERING_LOGGER
