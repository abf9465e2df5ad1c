"""PURE: whether a child the operator is about to create already exists as another resource's.

Children are found through their `app.kubernetes.io/instance` label, so a model cannot see an
object of the name it wants that another model made: model `X-stable` beside model `X` with a
Gateway (whose track Service is `X-stable`), or `X-canary` beside `X`'s canary. Applying it
anyway would take it over, and the two models would take it back from each other on every
resync (the Service's selector flipping between them). So before creating a child, the object of
that name is read, and one controlled by another resource is left alone and reported.

The same holds for any child's name taken by an object nobody controls that kubemaas did not make
(no `app.kubernetes.io/managed-by: kubemaas` label): an InferencePool or HTTPRoute a Helm chart
(llm-d's, say) or a person made under the model's name. Taking it over would rewrite it, and its
owner reference would let the garbage collector delete it with the model. An uncontrolled object
with the label (a child orphaned by `kubectl delete --cascade=orphan`) is adopted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "kubemaas"
UNMANAGED = (f"no owner; it was not made by kubemaas (no label {MANAGED_BY}: {MANAGER}: by hand "
             "or by another tool)")


class NameConflict(Exception):
    """A child's name belongs to an object another resource controls (the message says which)."""


def _controller(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if isinstance(r, Mapping) and r.get("controller")), None)


def foreign_owner(child: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """'KIND NAME' of the resource that controls `live` when it is not the child's owner (or
    UNMANAGED: nobody controls it and kubemaas did not make it); None when it is ours, an
    uncontrolled object with our label, or a model of our name deleted since (a new UID: the
    garbage collector removes its children, ours replace them)."""
    ours, theirs = _controller(child), _controller(live)
    if theirs is None:
        labels = (live.get("metadata") or {}).get("labels") or {}
        return None if ours is None or labels.get(MANAGED_BY) == MANAGER else UNMANAGED
    if ours is None or theirs.get("uid") == ours.get("uid"):
        return None
    if (theirs.get("kind"), theirs.get("name")) == (ours.get("kind"), ours.get("name")):
        return None
    return f"{theirs.get('kind')} {theirs.get('name')}"


def conflict_message(child: Mapping[str, Any], owner: str) -> str:
    kind, name = child.get("kind"), (child.get("metadata") or {}).get("name")
    whose = f"has {owner}" if owner == UNMANAGED else f"belongs to {owner}"
    return (f"the {kind} {name} this model needs already exists and {whose}; it is left alone. "
            "Rename one of the two (a model named NAME also uses NAME-stable and NAME-canary "
            "when it runs a canary or has a Gateway)")
