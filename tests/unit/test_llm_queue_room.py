"""The queue limit's accounting (llm/queue_room.py): requests take one place each, a beam
search's reservation its width, refused whole or not at all, and given back once."""

from __future__ import annotations

import pytest

from kubemaas_runtime.llm.queue_room import Overloaded, QueueRoom


def test_requests_take_a_place_each_up_to_the_limit() -> None:
    room = QueueRoom(2)
    room.take()
    room.take()
    with pytest.raises(Overloaded, match="2 of the queue's 2 places are taken"):
        room.take()
    assert room.held == 2
    room.give()
    room.take()
    assert room.taken == 2


def test_a_reservation_takes_its_width_or_nothing() -> None:
    room = QueueRoom(4)
    room.take()
    room.take()
    with pytest.raises(Overloaded, match="a beam search of width 3 needs 3 places; 2 of"):
        room.reserve(3)
    assert (room.held, room.reserved) == (2, 0)  # the refusal took nothing
    beam = room.reserve(2)
    assert (room.taken, beam.count) == (4, 2)
    with pytest.raises(Overloaded, match=r"requests waiting or running: 2, held by beam "
                                         r"searches: 2"):
        room.take()


def test_a_reservation_is_given_back_once() -> None:
    room = QueueRoom(3)
    beam = room.reserve(3)
    with pytest.raises(Overloaded):
        room.take()
    beam.release()
    beam.release()  # a search cancelled and then ended: released once
    assert room.reserved == 0 and beam.released
    for _ in range(3):
        room.take()
    assert room.taken == 3
