"""Whether kopf peering has paused this replica (no kopf import: it listens to kopf's log).

kopf pauses a replica's watch streams while a live peer has a higher priority, but the
operator's own work queue and periodic resync would go on reconciling from indexes frozen at
the moment of the pause. kopf exposes the pause to no handler; it logs every change of it
("Pausing operations …" / "Resuming operations …", kopf/_core/engines/peering.py), so this
module follows those lines and the queue and the resync ask `paused()` before they act. With
a peering name kopf starts paused (mandatory peering) until it has seen the peers; so do we.
tests/unit/test_standby.py pins the messages of the kopf version in use.
"""

from __future__ import annotations

import logging

KOPF_PEERING_LOGGER = "kopf._core.engines.peering"

_paused = False


def paused() -> bool:
    return _paused


def _set(value: bool) -> None:
    global _paused
    if value != _paused:
        logging.getLogger("kubemaas.standby").info(
            "%s", "standing by: another replica is active" if value else "active")
    _paused = value


class _PauseFollower(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Pausing "):
            _set(True)
        elif message.startswith("Resuming operations"):
            _set(False)


_follower = _PauseFollower()


def follow_kopf(peering: bool) -> None:
    """Start following kopf's pauses; with peering the replica starts paused, as kopf does."""
    global _paused
    _paused = peering
    logger = logging.getLogger(KOPF_PEERING_LOGGER)
    if _follower not in logger.handlers:
        logger.addHandler(_follower)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
