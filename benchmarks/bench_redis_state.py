"""Added latency per request of the Redis state store vs the in-memory store (loopback).

Runs the same successful GET against a local FaultServer through these sessions:

* ``requests``: a plain ``requests.Session`` (reference)
* ``adapter``: ``SmartRetryAdapter`` without breaker or budget
* ``memory``: breaker + budget, in-process state (the default)
* ``redis``: breaker + budget, state in a local ``redis-server`` (a success costs no round
  trip: the breaker is a local view, successes and deposits are sent in batches)
* ``pybreaker``, ``pybreaker-redis``: pybreaker's breaker around ``requests`` with its
  memory and its Redis storage (when pybreaker is installed: the ``bench`` extra)

Requests are interleaved round-robin so that machine noise hits every variant alike.  The
table shows the median (and p90) per request; the headline is the median of the paired
differences redis − memory (and pybreaker-redis − pybreaker) in the same rounds, and the
Redis commands per request (INFO commandstats, script-internal commands included).  A
second table times the breaker's state work alone (admit + record), without HTTP.

Usage::

    python benchmarks/bench_redis_state.py [--requests 2000] [--redis-url redis://...]

Without ``--redis-url`` it starts ``redis-server`` (must be on PATH) on a free port.
``BENCH_QUICK=1`` (set by ``benchmarks/run.py --quick``) runs 300 requests per variant.
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


def total_commands(client: Any) -> int:
    """Commands the server has executed (INFO commandstats; one INFO included)."""
    return sum(int(v["calls"]) for v in client.info("commandstats").values())


def pybreaker_calls(redis_url: str, url: str) -> dict[str, Callable[[], Any]]:
    """pybreaker around a plain session, with its memory and its Redis storage (none
    without pybreaker)."""
    try:
        import pybreaker
        import redis
    except ImportError:
        return {}
    session = requests.Session()
    memory = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, redis.Redis.from_url(redis_url),
        namespace=f"pybreaker-{os.getpid()}")
    shared = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, state_storage=storage)
    return {"pybreaker": lambda: memory.call(session.get, url),
            "pybreaker-redis": lambda: shared.call(session.get, url)}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = 300 if os.environ.get("BENCH_QUICK") else 2000
    parser.add_argument("--requests", type=int, default=default, help="requests per variant")
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
            calls: dict[str, Callable[[], Any]] = {
                name: (lambda s=session: s.get(url)) for name, session in variants.items()}
            calls.update(pybreaker_calls(redis_url, url))
            timings: dict[str, list[float]] = {name: [] for name in calls}
            for call in calls.values():  # warm up: connections, scripts
                for _ in range(50):
                    call()
            import redis

            inspect = redis.Redis.from_url(redis_url)
            commands_before = total_commands(inspect)
            clock: Callable[[], float] = time.perf_counter
            names = list(calls)
            for round_index in range(args.requests):
                shift = round_index % len(names)  # each variant goes first as often
                for name in names[shift:] + names[:shift]:
                    call = calls[name]
                    started = clock()
                    call()
                    timings[name].append(clock() - started)
            # every command of the run (ours and pybreaker's), then ours alone below
            run_commands = total_commands(inspect) - commands_before
            # ours alone, long enough to include its batched syncs (every sync_interval)
            ours_before = total_commands(inspect)
            ours_requests = 0
            ends = time.monotonic() + 2.5 * redis_store.sync_interval
            while ours_requests < args.requests or time.monotonic() < ends:
                calls["redis"]()
                ours_requests += 1
            ours_per_request = (total_commands(inspect) - ours_before - 1) / ours_requests
            # The state work of one successful request alone (no HTTP): breaker admit,
            # budget deposit (the first attempt's START), breaker record; interleaved.
            ops: dict[str, list[float]] = {"memory": [], "redis": []}
            work = {}
            for name, store in (("memory", MemoryStateStore()), ("redis", redis_store)):
                work[name] = (CircuitBreaker(store=store), RetryBudget(store=store))
            start = AttemptEvent(kind=EventKind.START, operation="bench", service="bench",
                                 attempt=1, max_attempts=1, call_id=0)
            success = AttemptEvent(kind=EventKind.SUCCESS, operation="bench",
                                   service="bench", attempt=1, max_attempts=1,
                                   call_id=0, verdict=Verdict.SUCCESS)
            for _ in range(20 * args.requests):
                for name, (breaker, budget) in work.items():
                    started = clock()
                    breaker.before_attempt("bench")
                    budget(start)
                    breaker(success)
                    ops[name].append(clock() - started)
            if not redis_store.shared:
                sys.exit("Redis became unreachable during the run; figures are not valid")
    finally:
        if process is not None:
            process.kill()
            process.wait()

    base = statistics.median(timings["adapter"])
    added = statistics.median(r - m for r, m in zip(timings["redis"], timings["memory"]))
    state_added = statistics.median(ops["redis"]) - statistics.median(ops["memory"])
    print(f"Added latency per successful request with Redis (breaker + budget), vs the "
          f"in-memory store in the same run (target <= 20 µs median):\n"
          f"  state work alone (admit + deposit + record, {len(ops['redis'])} requests): "
          f"{state_added * 1e6:+.1f} µs median\n"
          f"  through HTTP (median of paired differences redis - memory): "
          f"{added * 1e6:+.1f} µs\n"
          f"  Redis commands per request (INFO commandstats): {ours_per_request:.3f}")
    if "pybreaker-redis" in timings:
        theirs = statistics.median(r - m for r, m in zip(timings["pybreaker-redis"],
                                                         timings["pybreaker"]))
        print(f"  pybreaker's Redis storage, same rounds (pybreaker-redis - pybreaker): "
              f"{theirs * 1e6:+.1f} µs")
    print(f"(all variants: {run_commands} Redis commands in {args.requests} rounds)\n")
    print(f"Latency per request, {args.requests} requests per variant, loopback "
          f"(median over interleaved runs)\n")
    print(f"{'variant':<16} {'median µs':>10} {'p90 µs':>10} {'added vs adapter µs':>20}")
    for name, values in timings.items():
        median = statistics.median(values)
        cell = "" if name in ("requests", "adapter") or name.startswith("pybreaker") \
            else f"{(median - base) * 1e6:+.0f}"
        print(f"{name:<16} {median * 1e6:>10.0f} {percentile(values, 0.9) * 1e6:>10.0f} "
              f"{cell:>20}")
    print("\nState work of one successful request alone (admit + deposit + record, no HTTP)\n")
    print(f"{'store':<10} {'median µs':>10} {'p90 µs':>10}")
    for name, values in ops.items():
        print(f"{name:<10} {statistics.median(values) * 1e6:>10.1f} "
              f"{percentile(values, 0.9) * 1e6:>10.1f}")


if __name__ == "__main__":
    main()
