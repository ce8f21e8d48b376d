"""What the vendor fakes share: a FaultServer underneath, JSON replies and scripted faults."""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from typing import Any, Union
from urllib.parse import parse_qsl, urlsplit

from requests_smartretry.faultserver import FaultServer, RecordedRequest

#: A scripted step: ``(http_status, body)`` (or ``(http_status, body, headers)``) to answer
#: with, ``"reset"`` (act on the request, then reset the connection) or ``("hang", seconds)``.
Step = Union[str, tuple[Any, ...]]


class ScriptedFake:
    """A vendor fake: subclasses implement ``handle(request) -> (status, body) | None``;
    ``script(key, *steps)`` queues faults that are played before the normal answer."""

    def __init__(self) -> None:
        self.server = FaultServer(handlers={"/": self._dispatch})
        self._steps: dict[str, deque[Step]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def __enter__(self) -> ScriptedFake:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self.server.stop()

    @property
    def endpoint(self) -> str:
        """The fake's base URL (``http://127.0.0.1:PORT``)."""
        return f"http://127.0.0.1:{self.server.port}"

    def script(self, key: str, *steps: Step) -> None:
        """Queue ``steps`` for requests whose script key is ``key``."""
        with self._lock:
            self._steps.setdefault(key, deque()).extend(steps)

    def hits(self) -> int:
        """How many requests the fake received."""
        return self.server.hits()

    def script_key(self, request: RecordedRequest) -> str:
        """Which script a request consumes (subclasses choose)."""
        return urlsplit(request.path).path

    def act(self, request: RecordedRequest) -> tuple[int, Any]:
        """The vendor's normal answer (and its side effects)."""
        raise NotImplementedError

    def reject(self, request: RecordedRequest) -> tuple[int, Any] | None:
        """An authentication failure to answer with, or ``None`` when the request is valid."""
        return None

    def _next_step(self, key: str) -> Step | None:
        with self._lock:
            queue = self._steps.get(key)
            return queue.popleft() if queue else None

    def _dispatch(self, server: FaultServer, sock: socket.socket,
                  request: RecordedRequest) -> None:
        rejected = self.reject(request)
        if rejected is not None:
            self._reply(sock, *rejected)
            return
        step = self._next_step(self.script_key(request))
        if step == "reset":
            self.act(request)  # the server acted, then the connection broke
            self._abort(sock)
        elif isinstance(step, tuple) and step[0] == "hang":
            self._stopped.wait(float(step[1]))
            self._abort(sock)
        elif isinstance(step, tuple):
            self._reply(sock, int(step[0]), step[1], *step[2:3])
        else:
            self._reply(sock, *self.act(request))

    @staticmethod
    def _abort(sock: socket.socket) -> None:
        FaultServer.reset(sock)
        # FaultServer's serve loop still holds the socket through its reader, so the RST
        # goes out only when that loop ends: an OSError from a handler ends it.
        raise ConnectionAbortedError("fake vendor reset the connection")

    def finish_reply(self, status: int, payload: bytes) -> tuple[bytes, dict[str, str]]:
        """The body and extra headers to send (a fake that signs its answers adds them)."""
        return payload, {}

    def _reply(self, sock: socket.socket, status: int, body: Any,
               headers: dict[str, str] | None = None) -> None:
        payload, extra = self.finish_reply(
            status, json.dumps(body, ensure_ascii=False).encode("utf-8"))
        self.server.send(sock, status, payload, {
            "Content-Type": "application/json; charset=utf-8", **extra, **(headers or {})})


def query_of(request: RecordedRequest) -> list[tuple[str, str]]:
    """The request's query parameters, decoded, in order."""
    return parse_qsl(urlsplit(request.path).query, keep_blank_values=True)
