"""A minimal, fast HTTP/1.1 server for the benchmarks, run as a SEPARATE process.

    python benchmarks/server.py        # prints the port on the first line, serves until
                                       # stdin closes (the benchmark runner holds it open)

Raw sockets, one thread per keep-alive connection, prebuilt responses: a request costs the
server a few tens of microseconds, far less than any ``requests`` client spends, so the
client is the bottleneck.  Routes:

``/ok``                  200, 2-byte body
``/status/NNN``          that status, tiny body
``/big?bytes=N``         200 with N bytes (prebuilt, sent with one ``sendall``)
``/drip?interval=S&count=N``  headers, then one body byte every S seconds
``/storm?key=K&fail=1``  503 the first time key K is asked for, 200 after (``fail=0``: 200)
``/brownout``            503 or 200, half and half, from a seeded random sequence
``/flaky``               503 and 200 in turn (odd hits 503): on one fixed URL, a call retried
                         once succeeds (the retried-call benchmarks)
``/__hits?path=/x``      how many requests ``/x`` received (not counted itself)
``/__clear``             forget the counts
"""

from __future__ import annotations

import random
import socket
import sys
import threading
import time
from collections import Counter
from urllib.parse import parse_qs

_REASONS = {200: "OK", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}

_hits: Counter[str] = Counter()
_hits_lock = threading.Lock()
_big_cache: dict[int, bytes] = {}
# /storm keys already failed once, and /brownout's outcomes (reset by /__clear).
_storm_seen: set[str] = set()
_BROWNOUT_SEED = 14
_brownout = random.Random(_BROWNOUT_SEED)


def _response(status: int, body: bytes, extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            f"Content-Length: {len(body)}\r\nContent-Type: text/plain\r\n{extra}\r\n")
    return head.encode("latin-1") + body


_OK = _response(200, b"ok")
_STATUS_CACHE: dict[int, bytes] = {}


def _status(status: int) -> bytes:
    cached = _STATUS_CACHE.get(status)
    if cached is None:
        cached = _STATUS_CACHE[status] = _response(status, f"status {status}".encode())
    return cached


def _big(size: int) -> bytes:
    cached = _big_cache.get(size)
    if cached is None:
        cached = _response(200, b"x" * size)
        _big_cache[size] = cached
    return cached


def _serve(conn: socket.socket) -> None:
    buffer = b""
    try:
        while True:
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            while len(buffer) < length:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            buffer = buffer[length:]
            target = lines[0].split(b" ", 2)[1].decode("latin-1")
            path, _, query = target.partition("?")
            if not _respond(conn, path, query):
                return
    except OSError:
        return
    finally:
        conn.close()


def _respond(conn: socket.socket, path: str, query: str) -> bool:
    if path == "/ok":
        with _hits_lock:
            _hits[path] += 1
        conn.sendall(_OK)
        return True
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    if path == "/__hits":
        with _hits_lock:
            count = _hits[params.get("path", "")]
        conn.sendall(_response(200, str(count).encode()))
        return True
    if path == "/__clear":
        with _hits_lock:
            _hits.clear()
            _storm_seen.clear()
            _brownout.seed(_BROWNOUT_SEED)
        conn.sendall(_response(200, b"cleared"))
        return True
    with _hits_lock:
        _hits[path] += 1
        hit = _hits[path]
    if path.startswith("/status/"):
        conn.sendall(_status(int(path.rsplit("/", 1)[-1])))
    elif path == "/flaky":
        conn.sendall(_OK if hit % 2 == 0 else _status(503))
    elif path == "/storm":
        key = params.get("key", "")
        with _hits_lock:
            fail = params.get("fail") == "1" and key not in _storm_seen
            _storm_seen.add(key)
        conn.sendall(_status(503) if fail else _OK)
    elif path == "/brownout":
        with _hits_lock:
            fail = _brownout.random() < 0.5
        conn.sendall(_status(503) if fail else _OK)
    elif path == "/big":
        conn.sendall(_big(int(params.get("bytes", "10000000"))))
    elif path == "/drip":
        interval = float(params.get("interval", "0.05"))
        count = int(params.get("count", "100"))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % count)
        for _ in range(count):
            time.sleep(interval)
            conn.sendall(b"x")
    else:
        conn.sendall(_response(404, b"no such route"))
    return True


def _accept(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


def main() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    threading.Thread(target=_accept, args=(listener,), daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    sys.stdin.read()  # serve until the runner closes our stdin (or exits)
    listener.close()


if __name__ == "__main__":
    main()
