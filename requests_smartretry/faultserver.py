"""A small real HTTP/1.1 server on loopback that misbehaves on request.

Used by the demo, the test suite and the benchmarks.  Every behaviour is chosen by the
request path, so one server serves every scenario at once:

==========================  =====================================================
``/ok``                     200 with a short body
``/status/503``             that status (``?retry_after=``, ``?retry_after_ms=`` and
                            ``?should_retry=`` add Retry-After, Retry-After-Ms and
                            x-should-retry)
``/reset``                  reads the request, then resets the connection (RST)
``/hang?seconds=5``         reads the request, says nothing for that long
``/drip?interval=0.1&count=50``  headers, then one body byte per interval
``/midreset?count=1000``    headers and part of the body, then a reset
``/big?bytes=10000000``     a large body, as fast as the socket takes it
``/echo``                   200 with the request body
``/seq/KEY?steps=reset,503,ok``  the n-th request to KEY does step n (the last repeats)
``POST …/tasks?steps=…``     creates an async task (``{"id": "task-1"}``, JSON)
``GET …/tasks/ID``          the task's next step: a status word (``queued``,
                            ``running``, ``succeeded``, ``failed``…) answers 200
                            ``{"id", "status"}`` (Ark's shape), a fault step
                            (``503``, ``reset``) does that; unknown ids get 404
==========================  =====================================================

A task's steps come from its creation's ``?steps=`` (comma-separated), else from
``server.task_steps``; the last step repeats.  ``…/tasks`` may sit under any prefix, so
that a preset's path (``/api/v3/contents/generations/tasks``) reaches it too.

Example::

    with FaultServer() as server:
        requests.get(server.url("/status/503"))
        assert server.hits("/status/503") == 1
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit

__all__ = ["FaultServer", "RecordedRequest", "unused_port"]

_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}
_TASK_ROUTE = re.compile(r"^(?:/.*)?/tasks(?:/(?P<id>[^/]+))?/?$")
#: Task statuses that end a task without a result (answered with an ``error``).
_FAILED_TASK = frozenset({"failed", "cancelled", "expired"})


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.monotonic)

    @property
    def route(self) -> str:
        """The path without its query string."""
        return self.path.split("?", 1)[0]


def unused_port() -> int:
    """A loopback TCP port with nothing listening on it (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


Handler = Callable[["FaultServer", socket.socket, RecordedRequest], None]


class FaultServer:
    """A threaded HTTP/1.1 server on ``127.0.0.1:0`` with scripted faults (see module doc).

    ``handlers`` maps a route prefix to a custom ``handler(server, sock, request)`` for
    scenarios the paths do not cover (vendor fakes).  ``tls`` (a server-side
    ``ssl.SSLContext``) serves HTTPS; ``stalled_handshakes`` is how many of the next TLS
    handshakes it leaves unanswered (the client's handshake stalls until it gives up).
    Only complete requests are recorded and served: one cut short (headers or body) is
    never executed.  Safe to use from many threads.
    """

    def __init__(self, handlers: Optional[dict[str, Handler]] = None, *,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = int(self._listener.getsockname()[1])
        self.handlers = dict(handlers or {})
        self.tls = tls
        self.stalled_handshakes = 0
        self.requests: list[RecordedRequest] = []
        #: The steps a task created without ``?steps=`` plays, one per query.
        self.task_steps: list[str] = ["queued", "running", "succeeded"]
        self._lock = threading.Lock()
        self._recorded = threading.Condition(self._lock)
        self._sequences: dict[str, int] = {}
        self._tasks: dict[str, list[str]] = {}
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._conns: set[socket.socket] = set()
        self._acceptor = threading.Thread(target=self._accept, name="faultserver", daemon=True)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> FaultServer:
        """Start accepting connections."""
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Stop: close the listener and every open connection, end hanging handlers."""
        self._stopping.set()
        # close() alone does not wake a thread blocked in accept(); shutdown() does.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        self._acceptor.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the tests read ---------------------------------------------------------------

    def url(self, path: str = "/ok") -> str:
        """The full URL of ``path`` on this server."""
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def hits(self, route: Optional[str] = None) -> int:
        """How many requests reached the server (for ``route``, a path without query)."""
        with self._lock:
            return self._count(route)

    def wait_for_hits(self, count: int, route: Optional[str] = None,
                      timeout: float = 10.0) -> int:
        """How many requests reached the server (for ``route``), once ``count`` have or
        ``timeout`` seconds passed. A request the client wrote and then gave up on (a cut
        attempt) is read by the server's own thread, which on a loaded machine can run
        later than the client's return: a test expecting such a request waits for it."""
        with self._recorded:
            self._recorded.wait_for(lambda: self._count(route) >= count, timeout)
            return self._count(route)

    def _count(self, route: Optional[str]) -> int:
        """The requests recorded (for ``route``); the caller holds the lock."""
        if route is None:
            return len(self.requests)
        return sum(1 for r in self.requests if r.route == route)

    def received(self, route: Optional[str] = None) -> list[RecordedRequest]:
        """The requests received (for ``route``), oldest first."""
        with self._lock:
            return [r for r in self.requests if route is None or r.route == route]

    def open_connections(self) -> int:
        """How many client connections are open at the server now (a connection the
        client closed leaves the count when the server reads its end)."""
        with self._lock:
            return len(self._conns)

    def reset_counts(self) -> None:
        """Forget recorded requests and sequence positions."""
        with self._lock:
            self.requests.clear()
            self._sequences.clear()
            self._tasks.clear()

    # -- serving ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        if self.tls is not None:
            secured = self._handshake(conn)
            if secured is None:
                return
            conn = secured
        reader = conn.makefile("rb")
        try:
            while not self._stopping.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                    self._recorded.notify_all()
                if not self._respond(conn, request):
                    return
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                reader.close()
            with contextlib.suppress(OSError):
                conn.close()

    def _handshake(self, conn: socket.socket) -> Optional[socket.socket]:
        """The TLS side of a new connection (``None``: it ended before any request)."""
        assert self.tls is not None
        with self._lock:
            stall = self.stalled_handshakes > 0
            if stall:
                self.stalled_handshakes -= 1
        secured: Optional[socket.socket] = None
        try:
            conn.settimeout(5.0)  # a client that never says hello does not hold a thread
            if stall:  # read the ClientHello and never answer, until the client gives up
                while not self._stopping.is_set() and conn.recv(4096):
                    pass
                return None
            secured = self.tls.wrap_socket(conn, server_side=True)
            secured.settimeout(None)
            return secured
        except (OSError, ValueError):
            return None
        finally:
            with self._lock:
                self._conns.discard(conn)
                if secured is not None:
                    self._conns.add(secured)
            if secured is None:
                with contextlib.suppress(OSError):
                    conn.close()

    def _next_step(self, key: str, steps: list[str]) -> str:
        with self._lock:
            index = self._sequences.get(key, 0)
            self._sequences[key] = index + 1
        return steps[min(index, len(steps) - 1)]

    def _respond(self, conn: socket.socket, request: RecordedRequest) -> bool:
        """Answer one request; False closes the connection."""
        parts = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        route = parts.path
        for prefix, handler in self.handlers.items():
            if route.startswith(prefix):
                handler(self, conn, request)
                return request.headers.get("connection", "").lower() != "close"
        task = None if route.startswith("/seq/") else _TASK_ROUTE.match(route)
        if task is not None:
            return self._task(conn, request, task.group("id"), query)
        if route.startswith("/seq/"):
            step = self._next_step(route, query.get("steps", "ok").split(","))
        else:
            step = route.strip("/").split("/", 1)[0]
            if step == "status":
                step = route.rsplit("/", 1)[-1]
        return self._perform(conn, step, query, request)

    def _perform(self, conn: socket.socket, step: str, query: dict[str, str],
                 request: RecordedRequest) -> bool:
        if step == "ok":
            self.send(conn, 200, b"ok")
        elif step == "echo":
            self.send(conn, 200, request.body)
        elif step == "reset":
            self.reset(conn)
            return False
        elif step == "hang":
            self._stopping.wait(float(query.get("seconds", "30")))
            return False
        elif step == "drip":
            self._drip(conn, float(query.get("interval", "0.1")), int(query.get("count", "50")))
        elif step == "midreset":
            count = int(query.get("count", "1000"))
            conn.sendall(_head(200, {"Content-Length": str(count)}) + b"x" * (count // 2))
            time.sleep(0.05)
            self.reset(conn)
            return False
        elif step == "big":
            self._big(conn, int(query.get("bytes", "1000000")))
        elif step.isdigit():
            headers = {}
            for name, header in (("retry_after", "Retry-After"),
                                 ("retry_after_ms", "Retry-After-Ms"),
                                 ("should_retry", "x-should-retry")):
                if name in query:
                    headers[header] = query[name]
            self.send(conn, int(step), f"status {step}".encode(), headers)
        else:
            self.send(conn, 404, b"unknown scenario " + step.encode())
        return True

    def _task(self, conn: socket.socket, request: RecordedRequest, task_id: Optional[str],
              query: dict[str, str]) -> bool:
        """Create a task (POST on the collection) or play a query's next step."""
        if task_id is None:
            if request.method != "POST":
                self._json(conn, 405, {"error": {"code": "MethodNotAllowed", "message": "POST"}})
                return True
            plan = query["steps"].split(",") if query.get("steps") else list(self.task_steps)
            with self._lock:
                task_id = f"task-{len(self._tasks) + 1}"
                self._tasks[task_id] = plan
            self._json(conn, 200, {"id": task_id})
            return True
        with self._lock:
            steps = self._tasks.get(task_id)
        if steps is None:
            self._json(conn, 404, {"error": {"code": "ResourceNotFound",
                                             "message": "no such task"}})
            return True
        step = self._next_step(f"task:{task_id}", steps)
        if step == "reset" or step.isdigit():
            return self._perform(conn, step, query, request)
        answer: dict[str, Any] = {"id": task_id, "status": step}
        if step == "succeeded":
            answer["content"] = {"video_url": f"https://example.invalid/{task_id}.mp4"}
        elif step in _FAILED_TASK:
            answer["error"] = {"code": "DemoTaskFailed", "message": f"the task {step}"}
        self._json(conn, 200, answer)
        return True

    def _json(self, conn: socket.socket, status: int, body: Any) -> None:
        self.send(conn, status, json.dumps(body).encode("utf-8"),
                  {"Content-Type": "application/json"})

    # -- building blocks for custom handlers -------------------------------------------

    def send(self, conn: socket.socket, status: int, body: bytes,
             headers: Optional[dict[str, str]] = None) -> None:
        """Write a complete response with a Content-Length."""
        all_headers = {"Content-Length": str(len(body)), **(headers or {})}
        conn.sendall(_head(status, all_headers) + body)

    @staticmethod
    def reset(conn: socket.socket) -> None:
        """Close ``conn`` with a TCP RST (SO_LINGER 0): the client sees ECONNRESET."""
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            conn.close()

    def _drip(self, conn: socket.socket, interval: float, count: int) -> None:
        conn.sendall(_head(200, {"Content-Length": str(count)}))
        for _ in range(count):
            if self._stopping.wait(interval):
                return
            conn.sendall(b"x")

    @staticmethod
    def _big(conn: socket.socket, size: int) -> None:
        conn.sendall(_head(200, {"Content-Length": str(size)}))
        chunk = b"x" * 65536
        left = size
        while left > 0:
            piece = chunk if left >= len(chunk) else chunk[:left]
            conn.sendall(piece)
            left -= len(piece)


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_request(reader: Any) -> Optional[RecordedRequest]:
    """The next complete request, or ``None`` (the connection ended, possibly mid-request:
    a request cut short is never executed)."""
    line = reader.readline(65537)
    if not line.endswith(b"\n"):
        return None
    try:
        method, path, _version = line.decode("latin-1").split(" ", 2)
    except ValueError:
        return None
    headers: dict[str, str] = {}
    while True:
        raw = reader.readline(65537)
        if not raw.endswith(b"\n"):
            return None  # the head was cut short
        if raw in (b"\r\n", b"\n"):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body: Optional[bytes] = b""
    if "content-length" in headers:
        length = int(headers["content-length"])
        body = reader.read(length)
        if body is not None and len(body) < length:
            body = None
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = _read_chunked(reader)
    return None if body is None else RecordedRequest(method, path, headers, body)


def _read_chunked(reader: Any) -> Optional[bytes]:
    pieces: list[bytes] = []
    while True:
        size_line = reader.readline()
        if not size_line.endswith(b"\n"):
            return None
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return b"".join(pieces) if reader.readline().endswith(b"\n") else None
        piece = reader.read(size)
        if piece is None or len(piece) < size or not reader.readline().endswith(b"\n"):
            return None
        pieces.append(piece)
