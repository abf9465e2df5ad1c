"""kopf_watch: which optional kinds kopf watches, read from the Insights kopf runs with."""

from __future__ import annotations

import asyncio

from kopf._cogs.structs import references

from kubemaas_operator import kopf_watch


def test_watched_reads_kopfs_insights() -> None:
    pools = references.Resource("inference.networking.k8s.io", "v1", "inferencepools")
    kopf_watch.INSIGHTS.watched_resources.clear()
    assert not kopf_watch.watched("inference.networking.k8s.io/v1", "inferencepools")
    kopf_watch.INSIGHTS.watched_resources.add(pools)
    try:
        assert kopf_watch.watched("inference.networking.k8s.io/v1", "inferencepools")
        assert not kopf_watch.watched("gateway.networking.k8s.io/v1", "httproutes")
    finally:
        kopf_watch.INSIGHTS.watched_resources.discard(pools)


def test_nothing_is_asked_before_kopf_started() -> None:
    kopf_watch._settings.clear()
    asyncio.run(kopf_watch.ensure_watched("gateway.networking.k8s.io/v1", "httproutes"))
    assert not kopf_watch.INSIGHTS.watched_resources
