"""Make kopf watch an optional kind whose CRD appeared while the operator runs.

kopf looks at API discovery for a group again only when one of that group's CRDs changes. The
API server can list a new CRD's resource in discovery a moment after the CRD's last event
(Established), so kopf's last look may miss it and never start watching that kind. Children of
that kind are then unwatched until the operator restarts: their index stays as it was and a hand
edit is never repaired (seen on the testbed under load with HTTPRoutes and InferencePools). When
discovery.py finds a kind served that kopf does not watch, `ensure_watched` asks kopf to look at
the group again, through kopf's own handler for a CRD event. That handler is kopf-internal (kopf
is pinned); if it is missing or fails, the miss is logged and the operator goes on as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import kopf
from kopf._cogs.structs import references

from .render import HTTPROUTE_API_VERSION
from .render.autoscaler import SCALEDOBJECT_API_VERSION
from .render.inference import INFERENCEPOOL_API_VERSION
from .render.security import CERTIFICATE_API_VERSION
from .render.wake import INTERCEPTORROUTE_API_VERSION

log = logging.getLogger("kubemaas.handlers")

# Passed to kopf.run: the set of kinds kopf watches, which we read and ask kopf to revise.
INSIGHTS = references.Insights()
_settings: list[kopf.OperatorSettings] = []


def remember(settings: kopf.OperatorSettings) -> None:
    """The settings kopf runs with (its startup handler's argument)."""
    _settings[:] = [settings]


def watched(api_version: str, plural: str) -> bool:
    group, _, _ = api_version.rpartition("/")
    return any(r.group == group and r.plural == plural for r in INSIGHTS.watched_resources)


async def ensure_watched(api_version: str, plural: str) -> None:
    """Called when discovery says the kind is served: if kopf does not watch it, rescan."""
    if not _settings or not INSIGHTS.ready_resources.is_set() or watched(api_version, plural):
        return  # before kopf's own first look at discovery, that look will find it
    group = api_version.rpartition("/")[0]
    log.info("%s (%s) is served but kopf does not watch it (its CRD appeared after kopf's "
             "last look at discovery): asking kopf to look again", plural, api_version)
    try:
        from kopf._core.reactor import observation

        event: Any = {"type": "MODIFIED", "object": {"spec": {"group": group}}}
        await asyncio.wait_for(observation.process_discovered_resource_event(
            raw_event=event, settings=_settings[0], registry=kopf.get_default_registry(),
            insights=INSIGHTS), timeout=30)  # never hold up the discovery loop
    except Exception as err:  # kopf's internals moved: keep running, say what is missed
        log.warning("could not ask kopf to watch %s (%s): %s; hand edits of them are repaired "
                    "only after an operator restart", plural, api_version, err)


# How long a watch of a kind that is not served (404) waits before asking again.
VANISHED_RETRY_S = 5.0
# The groups of the optional kinds (discovery.OPTIONAL, the Gateway API): the operator serves
# models without them, so a kind of these it may not list does not stop it.
OPTIONAL_GROUPS = frozenset(v.rpartition("/")[0] for v in (
    HTTPROUTE_API_VERSION, SCALEDOBJECT_API_VERSION, INFERENCEPOOL_API_VERSION,
    CERTIFICATE_API_VERSION, INTERCEPTORROUTE_API_VERSION))
# Core kinds the operator reads but can do without (a rollout reads ResourceQuotas ahead; without
# them it learns of a full quota from a refused surge pod): (group, plural).
OPTIONAL_RESOURCES = frozenset({("", "resourcequotas")})
# An optional kind the operator may not list (403) is asked again after VANISHED_RETRY_S times this.
FORBIDDEN_BACKOFF = 6
_installed: list[bool] = []


def optional(resource: Any) -> bool:
    """Whether the operator runs on without `resource` (a kopf Resource)."""
    group = getattr(resource, "group", None)
    return group in OPTIONAL_GROUPS or (group, getattr(resource, "plural", None)) in (
        OPTIONAL_RESOURCES)


def tolerant(original: Callable[..., AsyncIterator[Any]], retry_s: float = VANISHED_RETRY_S,
             may_list: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
             ) -> Callable[..., AsyncIterator[Any]]:
    """kopf's watch loop, made to wait and ask again when the kind is not served (404) or the
    operator may not list it (403).

    When an optional kind's CRD is deleted (cert-manager, the Gateway API, the Inference
    Extension, KEDA uninstalled), the API server ends its watches; kopf's watch loop lists and
    watches again at once, and the new request can get 404 before kopf's own watch of CRDs has
    removed that kind's watcher. kopf then fails the whole operator ("Multidimensional multitasker
    has failed: 404 page not found": seen on the testbed when a test deleted the InferencePool
    CRD under load). Waiting instead lets kopf cancel the watcher when it sees the CRD go, and a
    CRD that comes back is watched again."""

    async def watch(**kwargs: Any) -> AsyncIterator[Any]:
        from kopf._cogs.clients import errors, watching

        forbidden_said = listed = False
        may_skip = optional(kwargs.get("resource"))
        while True:
            try:
                if may_skip:
                    await (may_list or _may_list)(kwargs)
                async for event in original(**kwargs):
                    listed = listed or event is watching.Bookmark.LISTED
                    yield event
                return
            except errors.APINotFoundError:
                log.warning("%s is not served (its CRD was deleted?): watching it again in "
                            "%.0f s", kwargs.get("resource"), retry_s)
                if not listed:
                    # A kind not served has nothing to list: it counts as listed (empty). kopf
                    # runs no handler of any kind until every indexed kind has listed once, and
                    # its watcher of a kind whose CRD went during the operator's start is not
                    # always stopped: the operator stopped reconciling models for good (seen
                    # on the testbed when KEDA's CRDs went seconds after a restart).
                    yield watching.Bookmark.LISTED
                    listed = True
                await asyncio.sleep(retry_s)
            except errors.APIForbiddenError as err:
                if not may_skip:
                    raise  # a kind every model needs: the operator cannot work without it
                # RBAC does not let the operator list or watch this kind (an administrator
                # removed one optional kind from its ClusterRole). kopf would fail the whole
                # operator, a crash loop that stops every model. Instead the kind counts as
                # listed and empty (kopf waits for every index's first listing before it runs
                # any handler) and is asked again; the models that need it say so in their
                # status, as the API server refuses their writes too.
                if not forbidden_said:
                    log.warning("cannot watch %s: %s; the operator goes on without it and asks "
                                "again every %.0f s", kwargs.get("resource"), err,
                                retry_s * FORBIDDEN_BACKOFF)
                    yield watching.Bookmark.LISTED
                    forbidden_said = listed = True
                await asyncio.sleep(retry_s * FORBIDDEN_BACKOFF)

    return watch


# kopf's request logs each failed attempt as an error; the probe's 403 is said once, below.
_PROBE_LOG = logging.getLogger("kubemaas.handlers.list_probe")
_PROBE_LOG.setLevel(logging.CRITICAL)


async def _may_list(kwargs: dict[str, Any]) -> None:
    """One listing of the kind (a single object), not retried: a 403 raises at once. kopf's own
    listing retries a 403 through its error_backoffs, about a minute, and until a kind's first
    listing ends no index is ready and no handler runs: an optional kind missing from the
    ClusterRole held up every model for a minute at each start of the operator."""
    from kopf._cogs.clients import api, errors

    url = kwargs["resource"].get_url(namespace=kwargs.get("namespace"), params={"limit": "1"})
    try:
        response = await api.request("get", url, settings=kwargs["settings"], backoffs=[],
                                     logger=_PROBE_LOG)
    except (errors.APIForbiddenError, errors.APINotFoundError):
        raise
    except Exception as err:  # a blip (429, 5xx, a timeout): kopf's listing retries those
        log.debug("listing %s once failed: %s; kopf's own listing goes on", url, err)
        return
    response.close()


def releasing(original: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """kopf's watcher of a kind, made to give up its hold on the operator's readiness when it
    ends. kopf runs no handler until every indexed kind has listed once, and its watcher drops
    its kind's readiness toggle only on that first listing. A watcher kopf stops before then
    (the kind's CRD went while its listing was under way: an add-on installed and removed at
    once, or uninstalled as the operator started) kept the toggle, and no handler of any model
    ran again until the operator restarted. A kind no longer watched has nothing to wait for."""

    async def watcher(**kwargs: Any) -> None:
        try:
            await original(**kwargs)
        finally:
            indexed, toggle = kwargs.get("operator_indexed"), kwargs.get("resource_indexed")
            if indexed is not None and toggle is not None and toggle in indexed:
                log.info("%s stopped before it listed once: the operator does not wait for it",
                         kwargs.get("resource"))
                # Shielded: the watcher ends by cancellation, and the drop must still happen.
                await asyncio.shield(indexed.drop_toggle(toggle))

    return watcher


def tolerate_vanished_kinds() -> None:
    """Install `tolerant` and `releasing` in kopf (once): its orchestrator looks the watcher up
    on its module, and the watcher looks up the watch loop on its own."""
    from kopf._cogs.clients import watching
    from kopf._core.reactor import queueing

    if not _installed:
        watching.infinite_watch = tolerant(watching.infinite_watch)
        queueing.watcher = releasing(queueing.watcher)  # type: ignore[assignment]
        _installed.append(True)
