"""The collector settings of the daemon and its helper: fewer collections, nothing kept for good."""

from __future__ import annotations

import gc
import weakref

import pytest

from helpdeskd import gctune


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collector():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_collects_freezes_and_collects_young_objects_less_often(collector):
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    gctune.settle()
    assert gone() is None  # garbage at start-up is collected first, not frozen
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == gctune.YOUNG


def test_a_second_settle_lets_go_of_what_the_first_froze(collector):
    """A reload settles again: the old configuration's objects, frozen at start, can then be freed."""
    kept = Node()  # alive at start-up, like the configuration
    gctune.settle()
    gone = weakref.ref(kept)
    del kept  # the reload dropped it: a frozen cycle, which no collection looks at
    gc.collect()
    assert gone() is not None
    gctune.settle()
    assert gone() is None
