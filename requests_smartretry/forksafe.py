"""Locks that start over in a forked child.

A child forked while another thread of the parent holds a lock (gunicorn's ``--preload``,
``multiprocessing``'s fork start method) inherits the lock held, by a thread that does not
exist in the child: the first use of the object would hang forever.  Every long-lived lock
of the library (breakers, budgets, statistics, throttles, the state stores, module-level
caches) comes from :func:`lock`, which records it; after a fork the child re-initialises
each one in place, released (the same thing CPython does for ``threading``'s and
``logging``'s own locks).  Objects keep their lock: nothing needs rebinding.

The state a lock guarded is left as the parent's thread left it at the fork; each object
guards only short updates of a few fields, which is what the child then sees.  Short-lived
locks (one call's) are plain ``threading.Lock`` objects: a child never uses them.
"""

from __future__ import annotations

import os
import threading
import weakref

__all__ = ["lock"]

_locks: weakref.WeakSet[threading.Lock] = weakref.WeakSet()


def lock() -> threading.Lock:
    """A new ``threading.Lock``, released again in a forked child."""
    new = threading.Lock()
    _locks.add(new)
    return new


def _after_fork_in_child() -> None:
    for each in list(_locks):
        each._at_fork_reinit()  # type: ignore[attr-defined]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
