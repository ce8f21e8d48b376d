"""A rate-limited vendor on loopback: at most ``rate`` requests executed in any 1 s window
and ``max_in_flight`` at once; beyond, a throttling answer and nothing executed.

Answers as Volcengine visual does (``style="volcengine"``: HTTP 429 with code 50429 for
the rate, 50430 for the concurrency) or as a plain API (``style="plain"``: HTTP 429, with
``Retry-After`` when ``retry_after`` is set).  Counts with server-side timestamps what it
executed (``executed``: monotonic times of the requests it let through), what it throttled
(``throttled``, by code) and the most requests it ever held at once (``peak``).

Run as a program it serves until killed, printing its port and, on SIGTERM, its counts as
one JSON line (the fleet benchmark uses that).
"""

from __future__ import annotations

import collections
import json
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional


class RateLimitedVendor:
    """The vendor; ``with RateLimitedVendor(rate=10) as vendor: vendor.url()``."""

    def __init__(self, rate: Optional[float] = None, max_in_flight: Optional[int] = None, *,
                 latency: float = 0.0, style: str = "volcengine",
                 retry_after: Optional[float] = None, port: int = 0) -> None:
        if style not in ("volcengine", "plain"):
            raise ValueError(f"style must be 'volcengine' or 'plain', got {style!r}")
        self.rate = rate
        self.max_in_flight = max_in_flight
        self.latency = latency
        self.style = style
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._window: collections.deque[float] = collections.deque()
        self.executed: list[float] = []
        self.throttled: dict[str, int] = {}
        self.answered: list[tuple[float, bool]] = []  # (wall time, throttled) per answer
        self.in_flight = 0
        self.peak = 0
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                vendor._handle(self)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                vendor._handle(self)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512

        self._server = Server(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self._thread: Optional[threading.Thread] = None

    def url(self, path: str = "/api") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> RateLimitedVendor:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RateLimitedVendor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def max_in_window(self, window: float = 1.0) -> int:
        """The most requests executed in any ``window`` seconds (half-open windows)."""
        times = sorted(self.executed)
        best = start = 0
        for end, stamp in enumerate(times):
            while stamp - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {"executed": len(self.executed), "throttled": dict(self.throttled),
                    "peak": self.peak, "max_in_window": self.max_in_window()}

    def _admit(self) -> Optional[str]:
        """None (executed: counted) or the throttling code."""
        now = time.monotonic()
        with self._lock:
            window = self._window
            while window and now - window[0] >= 1.0:
                window.popleft()
            if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
                code = "50430"
            elif self.rate is not None and len(window) >= self.rate:
                code = "50429"
            else:
                window.append(now)
                self.executed.append(now)
                self.answered.append((time.time(), False))
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                return None
            self.throttled[code] = self.throttled.get(code, 0) + 1
            self.answered.append((time.time(), True))
            return code

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        code = self._admit()
        if code is None:
            try:
                if self.latency:
                    time.sleep(self.latency)
                body: dict[str, Any] = {"code": 10000, "data": {"ok": True}, "message": "Success",
                                        "request_id": "req-fake", "status": 10000,
                                        "time_elapsed": "1ms"}
                self._reply(handler, 200, body, {})
            finally:
                with self._lock:
                    self.in_flight -= 1
            return
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        if self.style == "plain":
            self._reply(handler, 429, {"error": "rate limited"}, headers)
        else:
            message = "QPS limit" if code == "50429" else "concurrency limit"
            self._reply(handler, 429, {"code": int(code), "data": None, "message": message,
                                       "request_id": "req-fake", "status": int(code),
                                       "time_elapsed": "1ms"}, headers)

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any],
               headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass


def main(argv: list[str]) -> None:
    """``python -m tests.fakes.ratelimited RATE [MAX_IN_FLIGHT] [LATENCY]``."""
    rate = float(argv[0]) if argv else None
    max_in_flight = int(argv[1]) if len(argv) > 1 and argv[1] != "-" else None
    latency = float(argv[2]) if len(argv) > 2 else 0.0
    vendor = RateLimitedVendor(rate, max_in_flight, latency=latency).start()
    started = time.monotonic()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(vendor.port, flush=True)
    done.wait()
    counts = vendor.counts()
    counts["seconds"] = time.monotonic() - started
    counts["answered"] = vendor.answered
    print(json.dumps(counts), flush=True)


socketserver.TCPServer.allow_reuse_address = True

if __name__ == "__main__":
    main(sys.argv[1:])
