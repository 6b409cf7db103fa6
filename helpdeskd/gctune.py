"""The cyclic garbage collector, set for a long-running process (the daemon and its helper).

By default CPython runs a young-generation collection every 700 net allocations of container objects
and, now and then, a full one that walks every object alive: the modules, the configuration, the
compiled templates. Filing mail allocates a great deal (parsed messages, history records), almost all
of it freed at once by reference counting, so those collections found little and cost ~3 % of the
filing thread (measured in the POP3 gateway: 70-90 ms over 2,000 messages, one full collection alone
15-40 ms).

:func:`settle` is called once the process has loaded what it keeps: what is alive then is frozen
(``gc.freeze``: never walked again) and young collections run every :data:`YOUNG` allocations instead
of 700 (a few milliseconds over the same 2,000 messages). Garbage in cycles still goes, a little later.
A reload calls it again: the previous configuration's frozen objects are thawed and collected first,
so nothing is kept for good that a reload let go.
"""

from __future__ import annotations

import gc

YOUNG = 10_000  # net container allocations between young-generation collections (CPython's default: 700)


def settle() -> None:
    """Collect what is garbage now, freeze what is left, and collect young objects less often."""
    gc.unfreeze()  # a reload: what the old configuration left is collectable again
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
