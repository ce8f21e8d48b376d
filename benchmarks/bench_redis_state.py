"""Added latency per request of the Redis state store vs the in-memory store (loopback).

Runs the same successful GET against a local FaultServer through four sessions:

* ``requests``: a plain ``requests.Session`` (reference)
* ``adapter``: ``SmartRetryAdapter`` without breaker or budget
* ``memory``: breaker + budget, in-process state (the default)
* ``redis``: breaker + budget, state in a local ``redis-server`` (about 2.1 round trips
  per request: admit, record, and a batched budget deposit every 10 calls)

Requests are interleaved round-robin so that machine noise hits every variant alike, and
the table shows the median (and p90) per request and the median added over ``adapter``.
A second table times the breaker's state work alone (admit + record), without HTTP.

Usage::

    python benchmarks/bench_redis_state.py [--requests 2000] [--redis-url redis://...]

Without ``--redis-url`` it starts ``redis-server`` (must be on PATH) on a free port.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import requests

from requests_smartretry import (
    AttemptEvent,
    CircuitBreaker,
    EventKind,
    RetryBudget,
    Verdict,
    smart_session,
)
from requests_smartretry.faultserver import FaultServer, unused_port
from requests_smartretry.redis_state import RedisStateStore
from requests_smartretry.state import MemoryStateStore


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: install it or pass --redis-url")
    port = unused_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    process.kill()
    sys.exit("redis-server did not start")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per variant")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    args = parser.parse_args(argv)

    process: Optional[subprocess.Popen[bytes]] = None
    redis_url = args.redis_url
    if redis_url is None:
        process, redis_url = start_redis()
    try:
        with FaultServer() as server:
            url = server.url("/ok")
            redis_store = RedisStateStore(redis_url, prefix=f"bench-{os.getpid()}")
            variants: dict[str, Any] = {
                "requests": requests.Session(),
                "adapter": smart_session(log=False, budget=None),
                "memory": smart_session(log=False, breaker=CircuitBreaker(),
                                        budget=RetryBudget(), state=MemoryStateStore()),
                "redis": smart_session(log=False, breaker=CircuitBreaker(),
                                       budget=RetryBudget(), state=redis_store),
            }
            timings: dict[str, list[float]] = {name: [] for name in variants}
            for session in variants.values():  # warm up: connections, scripts
                for _ in range(50):
                    session.get(url)
            clock: Callable[[], float] = time.perf_counter
            for _ in range(args.requests):
                for name, session in variants.items():
                    started = clock()
                    session.get(url)
                    timings[name].append(clock() - started)
            # The state work of one successful request alone (no HTTP): admit + record.
            ops: dict[str, list[float]] = {}
            for name, store in (("memory", MemoryStateStore()), ("redis", redis_store)):
                breaker = CircuitBreaker(store=store)
                success = AttemptEvent(kind=EventKind.SUCCESS, operation="bench",
                                       service="bench", attempt=1, max_attempts=1,
                                       call_id=0, verdict=Verdict.SUCCESS)
                ops[name] = []
                for _ in range(args.requests):
                    started = clock()
                    breaker.before_attempt("bench")
                    breaker(success)
                    ops[name].append(clock() - started)
            if not redis_store.shared:
                sys.exit("Redis became unreachable during the run; figures are not valid")
    finally:
        if process is not None:
            process.kill()
            process.wait()

    base = statistics.median(timings["adapter"])
    print(f"Added latency per request, {args.requests} requests per variant, loopback "
          f"(median over interleaved runs)\n")
    print(f"{'variant':<10} {'median µs':>10} {'p90 µs':>10} {'added vs adapter µs':>20}")
    for name, values in timings.items():
        median = statistics.median(values)
        added = "" if name in ("requests", "adapter") else f"{(median - base) * 1e6:+.0f}"
        print(f"{name:<10} {median * 1e6:>10.0f} {percentile(values, 0.9) * 1e6:>10.0f} "
              f"{added:>20}")
    print("\nBreaker state work of one request alone (admit + record, no HTTP)\n")
    print(f"{'store':<10} {'median µs':>10} {'p90 µs':>10}")
    for name, values in ops.items():
        print(f"{name:<10} {statistics.median(values) * 1e6:>10.1f} "
              f"{percentile(values, 0.9) * 1e6:>10.1f}")


if __name__ == "__main__":
    main()
