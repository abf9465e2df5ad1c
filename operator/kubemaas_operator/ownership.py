"""PURE: whether a child the operator is about to create already exists as another resource's.

Children are found through their `app.kubernetes.io/instance` label, so a model cannot see an
object of the name it wants that another model made: model `X-stable` beside model `X` with a
Gateway (whose track Service is `X-stable`), or `X-canary` beside `X`'s canary. Applying it
anyway would take it over, and the two models would take it back from each other on every
resync (the Service's selector flipping between them). So before creating a child, the object of
that name is read, and one controlled by another resource is left alone and reported."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Only these names can clash: every other child is named exactly as its model, and two models
# cannot share a name; so only they cost a read before their creation.
CLASHING_SUFFIXES = ("-stable", "-canary")


def may_clash(child: Mapping[str, Any]) -> bool:
    return str((child.get("metadata") or {}).get("name") or "").endswith(CLASHING_SUFFIXES)


class NameConflict(Exception):
    """A child's name belongs to an object another resource controls (the message says which)."""


def _controller(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if isinstance(r, Mapping) and r.get("controller")), None)


def foreign_owner(child: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """'KIND NAME' of the resource that controls `live` when it is not the child's owner; None
    when it is ours, has no controller, or was a model of our name deleted since (a new UID:
    the garbage collector removes its children, ours replace them)."""
    ours, theirs = _controller(child), _controller(live)
    if ours is None or theirs is None or theirs.get("uid") == ours.get("uid"):
        return None
    if (theirs.get("kind"), theirs.get("name")) == (ours.get("kind"), ours.get("name")):
        return None
    return f"{theirs.get('kind')} {theirs.get('name')}"


def conflict_message(child: Mapping[str, Any], owner: str) -> str:
    kind, name = child.get("kind"), (child.get("metadata") or {}).get("name")
    return (f"the {kind} {name} this model needs already exists and belongs to {owner}; it is "
            "left alone. Rename one of the two (a model named NAME also uses NAME-stable and "
            "NAME-canary when it runs a canary or has a Gateway)")
