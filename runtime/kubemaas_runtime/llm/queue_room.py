"""The engine's queue limit (``--max-queue-size``), counted on the event loop.

Each request submitted and not finished takes one place. A beam search takes its width's
worth from its admission to its end (a ``Reservation``): each of its steps asks the engine for
one token of each of up to ``width`` live beams, and those requests go in within the
reservation, never refused and never counted again. So a search whose room is not there is
refused at once (429) rather than admitted to wait for room step after step, an admitted one
never waits behind requests that came after it, and ordinary requests are refused only for
room that is really taken. (vLLM has no queue limit: this accounting is ours.)
"""

from __future__ import annotations


class Overloaded(Exception):
    """The engine holds as many requests as it may (the caller answers 429)."""


class QueueRoom:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0  # requests submitted and not finished, outside any reservation
        self.reserved = 0  # the places beam searches hold

    @property
    def taken(self) -> int:
        return self.held + self.reserved

    def check(self, count: int = 1) -> None:
        """Overloaded unless ``count`` more places are free."""
        if self.taken + count > self.limit:
            asked = "" if count == 1 else f"a beam search of width {count} needs {count} " \
                "places; "
            raise Overloaded(f"{asked}{self.taken} of the queue's {self.limit} places are "
                             f"taken (requests waiting or running: {self.held}, held by beam "
                             f"searches: {self.reserved})")

    def take(self) -> None:
        """One request admitted (Overloaded when the queue is full)."""
        self.check()
        self.held += 1

    def give(self) -> None:
        """One admitted request finished."""
        self.held -= 1

    def reserve(self, count: int) -> Reservation:
        """``count`` places held until the reservation is released (Overloaded when they
        are not free)."""
        self.check(count)
        self.reserved += count
        return Reservation(self, count)


class Reservation:
    """A beam search's places; released once, whichever way the search ends."""

    def __init__(self, room: QueueRoom, count: int) -> None:
        self._room = room
        self.count = count
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._room.reserved -= self.count
