"""kopf_watch.tolerant: a watch of a kind that is not served (404), or of an optional kind the
operator may not list (403), waits and asks again instead of failing the operator."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kopf._cogs.clients import errors

from kubemaas_operator.kopf_watch import releasing, tolerant


def _not_found() -> errors.APINotFoundError:
    return errors.APINotFoundError("404 page not found", status=404, headers={})


def test_a_404_waits_and_watches_again_with_the_same_arguments() -> None:
    from kopf._cogs.clients import watching

    calls: list[dict[str, Any]] = []
    listed = watching.Bookmark.LISTED

    async def kopf_loop(**kwargs: Any) -> AsyncIterator[Any]:
        calls.append(kwargs)
        if len(calls) == 1:
            yield listed
            yield "first"
            raise _not_found()  # the CRD went while watching
        if len(calls) == 2:
            raise _not_found()  # still gone
        yield listed
        yield "back"

    async def collect() -> list[Any]:
        return [e async for e in tolerant(kopf_loop, retry_s=0.01)(resource="r", namespace=None)]

    assert asyncio.run(collect()) == [listed, "first", listed, "back"]  # no listing made up
    assert calls == [{"resource": "r", "namespace": None}] * 3


def test_a_kind_gone_before_its_first_listing_counts_as_listed_for_kopf() -> None:
    """KEDA's CRDs went seconds after the operator restarted: the watch of interceptorroutes got
    404 before it had listed once, and kopf, which runs no handler until every indexed kind has
    listed, ran none again (models stayed at 1/3 Ready for minutes; only the resync timer ran).
    Driven through kopf's own watcher and readiness toggles: they turn ready at once now."""
    from kopf._cogs.aiokits import aiotoggles
    from kopf._cogs.clients import watching
    from kopf._cogs.configs import configuration
    from kopf._cogs.structs import references
    from kopf._core.reactor import queueing

    async def gone(**kwargs: Any) -> AsyncIterator[Any]:
        raise _not_found()
        yield "never"

    async def run() -> bool:
        operator_indexed = aiotoggles.ToggleSet(all)
        resource_indexed = await operator_indexed.make_toggle(name="interceptorroutes")
        original = watching.infinite_watch
        watching.infinite_watch = tolerant(gone, retry_s=60, may_list=_may)
        try:
            task = asyncio.create_task(queueing.watcher(
                namespace=None, settings=configuration.OperatorSettings(),
                resource=references.Resource("http.keda.sh", "v1beta1", "interceptorroutes"),
                processor=_never_called, operator_indexed=operator_indexed,
                resource_indexed=resource_indexed))
            try:
                await asyncio.wait_for(operator_indexed.wait_for(True), timeout=5)
                return operator_indexed.is_on()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            watching.infinite_watch = original

    assert asyncio.run(run())


async def _never_called(**kwargs: Any) -> None:
    raise AssertionError(f"a kind that is not served has no events: {kwargs}")


def test_other_errors_still_end_the_watch() -> None:
    async def kopf_loop(**kwargs: Any) -> AsyncIterator[str]:
        raise errors.APIForbiddenError("forbidden", status=403, headers={})
        yield "never"

    async def collect() -> list[str]:
        return [e async for e in tolerant(kopf_loop, retry_s=0.01)()]

    with pytest.raises(errors.APIForbiddenError):
        asyncio.run(collect())


def test_a_cancelled_watcher_stops_while_it_waits() -> None:
    async def kopf_loop(**kwargs: Any) -> AsyncIterator[str]:
        raise _not_found()
        yield "never"

    async def run() -> None:
        async def consume() -> None:
            async for _ in tolerant(kopf_loop, retry_s=60)():
                pass
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()  # kopf cancels the watcher when it sees the CRD go
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())


async def _may(kwargs: dict[str, Any]) -> None:
    """A listing probe that finds nothing wrong: kopf's own listing decides."""


def test_an_optional_kind_the_operator_may_not_list_counts_as_listed_and_is_asked_again() -> None:
    """RBAC without keda.sh scaledobjects: kopf failed the whole operator on the 403 (a crash
    loop: 'scaledobjects.keda.sh is forbidden ... cannot list resource'). Now the kind counts
    as listed (empty) once, so that kopf runs the other handlers, and is asked again."""
    from kopf._cogs.clients import watching
    from kopf._cogs.structs import references

    calls: list[int] = []

    async def kopf_loop(**kwargs: Any) -> AsyncIterator[Any]:
        calls.append(1)
        if len(calls) < 3:
            raise errors.APIForbiddenError("forbidden", status=403, headers={})
        yield "granted"

    keda = references.Resource("keda.sh", "v1alpha1", "scaledobjects")
    deployments = references.Resource("apps", "v1", "deployments")

    async def collect(resource: references.Resource) -> list[Any]:
        return [e async for e in tolerant(kopf_loop, retry_s=0.001, may_list=_may)(
            resource=resource)]

    assert asyncio.run(collect(keda)) == [watching.Bookmark.LISTED, "granted"]
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(errors.APIForbiddenError):  # a kind every model needs still stops it
        asyncio.run(collect(deployments))
    # ResourceQuotas (core, read ahead by a rollout) are optional too; pods are not
    calls.clear()
    quotas = references.Resource("", "v1", "resourcequotas")
    assert asyncio.run(collect(quotas)) == [watching.Bookmark.LISTED, "granted"]
    calls.clear()
    with pytest.raises(errors.APIForbiddenError):
        asyncio.run(collect(references.Resource("", "v1", "pods")))


def test_a_forbidden_optional_kind_counts_as_listed_at_once() -> None:
    """kopf's listing retries a 403 through its error_backoffs (about a minute) before it
    raises, and no handler runs until every index has listed once: a ClusterRole without
    keda.sh held up every model for a minute at each start. The kind is now listed once
    without retries first, so a 403 counts it as listed at once."""
    from kopf._cogs.clients import watching
    from kopf._cogs.structs import references

    probes: list[dict[str, Any]] = []
    loops: list[int] = []

    async def forbidden(kwargs: dict[str, Any]) -> None:
        probes.append(kwargs)
        raise errors.APIForbiddenError("forbidden", status=403, headers={})

    async def kopf_loop(**kwargs: Any) -> AsyncIterator[Any]:
        loops.append(1)  # kopf's own listing: a minute of retries on a 403
        await asyncio.sleep(60)
        yield "never"

    keda = references.Resource("keda.sh", "v1alpha1", "scaledobjects")

    async def first() -> Any:
        stream = tolerant(kopf_loop, retry_s=60, may_list=forbidden)(resource=keda)
        return await asyncio.wait_for(stream.__anext__(), timeout=1)

    assert asyncio.run(first()) is watching.Bookmark.LISTED
    assert loops == [] and probes[0]["resource"] is keda


def test_a_watcher_stopped_before_its_first_listing_does_not_hold_kopf_back() -> None:
    """kopf runs no handler until every indexed kind has listed once, and a watcher it stops
    (the kind's CRD went) keeps its kind's readiness toggle. One stopped while its first
    listing was still under way held every handler of the operator for good. Driven through
    kopf's own watcher, readiness toggles and task stopping (orchestration's path when a CRD
    goes): with the watcher as the operator installs it, readiness turns on once it stops."""
    from kopf._cogs.aiokits import aiotasks, aiotoggles
    from kopf._cogs.clients import watching
    from kopf._cogs.configs import configuration
    from kopf._cogs.structs import references
    from kopf._core.reactor import queueing

    async def listing_under_way(**kwargs: Any) -> AsyncIterator[Any]:
        await asyncio.Event().wait()  # the API server has not answered the listing yet
        yield "never"

    async def run(watcher: Any) -> bool:
        operator_indexed = aiotoggles.ToggleSet(all)
        resource_indexed = await operator_indexed.make_toggle(name="interceptorroutes")
        original = watching.infinite_watch
        watching.infinite_watch = listing_under_way
        try:
            task = asyncio.create_task(watcher(
                namespace=None, settings=configuration.OperatorSettings(),
                resource=references.Resource("http.keda.sh", "v1beta1", "interceptorroutes"),
                processor=_never_called, operator_indexed=operator_indexed,
                resource_indexed=resource_indexed))
            await asyncio.sleep(0.05)
            await aiotasks.stop([task], title="streaming", logger=logging.getLogger("t"),
                                interval=10, quiet=True)
            await asyncio.wait_for(operator_indexed.wait_for(True), timeout=2)
            return operator_indexed.is_on()
        except TimeoutError:
            return False
        finally:
            watching.infinite_watch = original

    assert not asyncio.run(run(queueing.watcher))  # kopf's own watcher holds readiness back
    assert asyncio.run(run(releasing(queueing.watcher)))
