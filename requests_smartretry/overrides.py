"""Per-call overrides: :func:`retry_options`, a block whose calls run with other policy fields.

One service often calls one vendor in several ways (a billed task submission: at most one
retry; a status poll: many cheap ones; a download: a long timeout) through one session::

    with retry_options(max_retries=0, deadline=5.0):
        session.post(url, json=body)          # this call, and any smart call started here

Every smart call (the adapter, the httpx transports, the callable API, the waiters) reads
the overrides once, when it starts (:func:`effective_policy`), and runs with
``policy.replace(**overrides)``; nothing changes for calls already under way.  The
overrides live in a ``contextvars.ContextVar``: each thread and each asyncio task sees
its own.  An asyncio task, ``asyncio.to_thread`` and the callable API's worker threads
started inside a block inherit it (they copy the context); a plain ``threading.Thread``
or a ``ThreadPoolExecutor`` worker does not (before Python 3.14): submit
``contextvars.copy_context().run`` to carry it there.  A generator that yields inside a
block leaves the block open for its consumer until it resumes (contextvars are not
per generator): open blocks around calls, not around ``yield``.  Blocks nest; the inner
block's value of a field wins.

Outside any block a call pays one ``ContextVar.get()``.  Inside one, the policy derived
for (policy, overrides) is cached, so a block entered again and again (a loop around a
``with``) costs a dictionary look-up per call, not a new validated policy.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Optional

from . import forksafe
from .policy import RetryPolicy

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import PolicyOptions

__all__ = ["Overrides", "current_overrides", "effective_policy", "retry_options"]

# A policy on which any single field's value validates alone (fields checked against one
# another, as backoff_base <= backoff_max, are checked again against the call's policy).
_PERMISSIVE = RetryPolicy(max_retries=1 << 30, backoff_base=0.0, backoff_max=1e12)
_FIELDS = RetryPolicy.field_names()
# Derived policies kept per Overrides, and Overrides interned by their fields: bounded
# (cleared when full) so that policies built per request cannot grow memory.
_MAX_CACHED = 64
_MAX_INTERNED = 256


class Overrides:
    """The policy fields a :func:`retry_options` block sets (its enclosing blocks' merged
    in, the inner value winning), and the policies derived from them.

    Example::

        with retry_options(max_retries=0) as overrides:
            overrides.fields                  # {'max_retries': 0}
            overrides.apply(RetryPolicy())    # RetryPolicy(max_retries=0, timeout=30.0)

    Thread-safe: the fields never change; the cache takes single dict operations only.
    """

    __slots__ = ("_derived", "fields")

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.fields: Mapping[str, Any] = MappingProxyType(dict(fields))
        # id(policy) -> (policy, derived): the policy is kept so that its id stays its own.
        self._derived: dict[int, tuple[RetryPolicy, RetryPolicy]] = {}

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in sorted(self.fields.items()))
        return f"Overrides({shown})"

    def apply(self, policy: RetryPolicy) -> RetryPolicy:
        """``policy`` with these fields replaced (validated; the same object for the same
        ``policy`` every time).  A value that cannot apply to ``policy`` (a
        ``backoff_base`` above its ``backoff_max``) raises ``ValueError`` naming it."""
        cached = self._derived.get(id(policy))
        if cached is not None and cached[0] is policy:
            return cached[1]
        try:
            derived = policy.replace(**self.fields)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"retry_options({_shown(self.fields)}) does not apply to "
                            f"{policy!r}: {exc}") from exc
        if len(self._derived) >= _MAX_CACHED:
            self._derived.clear()
        self._derived[id(policy)] = (policy, derived)
        return derived


_CURRENT: contextvars.ContextVar[Optional[Overrides]] = contextvars.ContextVar(
    "requests_smartretry_retry_options", default=None)

#: The overrides of the innermost :func:`retry_options` block around the caller, or None
#: (the C-level ``ContextVar.get``: transports call it once per call).
current_overrides = _CURRENT.get

_interned: dict[Any, Overrides] = {}
_interned_lock = forksafe.lock()


def effective_policy(policy: RetryPolicy) -> RetryPolicy:
    """The policy a call starting here runs with: ``policy``, or inside a
    :func:`retry_options` block ``policy`` with the block's fields."""
    overrides = _CURRENT.get()
    return policy if overrides is None else overrides.apply(policy)


@contextmanager
def retry_options(**fields: Unpack[PolicyOptions]) -> Iterator[Overrides]:
    """Override policy fields for every smart call started inside the block.

    Example::

        with retry_options(max_retries=0, deadline=5.0):
            session.post(url, json=body)          # one attempt, 5 s in all
        with retry_options(max_retries=5, backoff_max=10.0):
            status = session.get(status_url)      # many cheap retries

    Any :class:`RetryPolicy` field may be given; a name that is not one raises
    ``TypeError`` naming it, and a bad value the policy's own ``ValueError`` /
    ``TypeError`` naming it, when the block is entered (a value that fits a field but
    not the call's policy, as a ``backoff_base`` above its ``backoff_max``, when the call
    starts).  Blocks nest, the inner value winning; each thread and asyncio task sees its
    own blocks.  Yields the block's :class:`Overrides`.
    """
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise TypeError(f"retry_options() got unexpected keyword(s): {', '.join(unknown)} "
                        f"(not RetryPolicy fields)")
    outer = _CURRENT.get()
    merged: dict[str, Any] = dict(outer.fields) if outer is not None else {}
    merged.update(_normalised(fields))
    block = _intern(merged)
    token = _CURRENT.set(block)
    try:
        yield block
    finally:
        try:
            _CURRENT.reset(token)
        except ValueError:  # exited in another context (a generator closed elsewhere):
            if _CURRENT.get() is block:  # undo the block there, not an unrelated one
                _CURRENT.set(outer)


def _normalised(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` validated by the policy itself, as the policy stores them (frozensets,
    tuples): one value per meaning, hashable for :func:`_intern`."""
    try:
        checked = _PERMISSIVE.replace(**fields)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"retry_options({_shown(fields)}): {exc}") from exc
    return {name: getattr(checked, name) for name in fields}


def _intern(fields: dict[str, Any]) -> Overrides:
    """The one :class:`Overrides` for ``fields`` (so a block entered again finds the
    policies derived the last time), or a new one when a value is not hashable."""
    try:
        key: Any = frozenset(fields.items())
        hash(key)
    except TypeError:  # a callable that is not hashable: no sharing, still correct
        return Overrides(fields)
    found = _interned.get(key)
    if found is not None:
        return found
    with _interned_lock:
        found = _interned.get(key)
        if found is None:
            if len(_interned) >= _MAX_INTERNED:
                _interned.clear()
            found = _interned[key] = Overrides(fields)
    return found


def _shown(fields: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in sorted(fields.items()))
