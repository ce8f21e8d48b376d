"""The pub/sub listener: a thread per store that marks views stale when another process
announces a breaker's change, and proves the subscription alive while the store is used."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from .store import RedisStateStore

__all__ = ["listen"]

_monotonic = time.monotonic


def listen(ref: Callable[[], Optional[RedisStateStore]]) -> None:
    """The listener thread: marks views stale when another process announces a change.
    Holds only a weak reference to its store between waits, and ends when the store is
    gone or closed."""
    pubsub: Any = None
    last_ping = 0.0
    pause = 0.5  # (then half the store's poll interval)
    while True:
        store = ref()
        if store is None or store._closed or store._listener is not threading.current_thread():
            if store is not None:
                store._set_listening(False)
            break
        try:
            if pubsub is None:
                client = store._client
                if client is None or store._down:
                    store._set_listening(False)
                    wait: Any = None
                else:
                    pubsub = client.pubsub()
                    pubsub.subscribe(store.channel)
                    last_ping = _monotonic()
                    wait = pubsub
            else:
                wait = pubsub
                message = pubsub.get_message(timeout=0.0)
                if message is not None:
                    store._heard = _monotonic()
                    wait = None if message else pubsub
                    kind = message.get("type")
                    if kind == "subscribe":
                        store._set_listening(True)
                    elif kind == "message":
                        data = message.get("data")
                        store._notified(data.decode("utf-8", "replace")
                                        if isinstance(data, bytes) else str(data))
                    continue
                # In use: a PING every half poll interval proves the subscription alive
                # (see _heard); idle, one every 5 s keeps the connection open.
                mono = _monotonic()
                pause = store.poll_interval / 2.0
                if mono - last_ping > (pause if mono - store._used < store.sync_interval
                                       else 5.0):
                    pubsub.ping()
                    last_ping = mono
        except Exception:  # the connection broke: poll meanwhile, subscribe again
            store._set_listening(False)
            _close_quietly(pubsub)
            pubsub = None
            wait = None
        del store
        try:
            _wait_for_message(wait, pause)
        except Exception:
            _close_quietly(pubsub)
            pubsub = None
    _close_quietly(pubsub)


def _close_quietly(pubsub: Any) -> None:
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception:
            pass


def _wait_for_message(pubsub: Any, pause: float = 0.5) -> None:
    """Wait up to ``pause`` seconds for the next message (then the thread re-checks its
    store); without a subscription, a short pause before subscribing again."""
    connection = getattr(pubsub, "connection", None)
    if connection is not None:
        connection.can_read(timeout=pause)
    else:
        time.sleep(0.2)
