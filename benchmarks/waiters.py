"""A wait fleet: 1,000 threads, each waiting for its own task, against a local fake.

    python benchmarks/waiters.py                  # 1,000 tasks, ~1 minute: markdown on stdout
    python benchmarks/waiters.py --tasks 100      # a smoke run

Each task is submitted at a moment spread over ``--spread`` seconds and becomes done
``U(--min-seconds, --max-seconds)`` after it (``ready_at``, chosen by the client; the same
seeded moments for every variant), answered by a stateless server in a child process:
``{"status": "running"}`` before it, ``{"status": "succeeded"}`` from it on.  Per variant,
one thread per task polls until done.  Measured: polls per task; the time-to-done
overshoot (when the waiter returned minus ``ready_at``: what waiting costs in latency),
mean / p50 / p99; the wall time of the whole fleet; the mean time of one GET (how loaded
the machine was); the client CPU.

Variants (all on one ``requests`` session per variant with a pool as large as the fleet):

- ``hand-written``: ``while True: get; if done: break; time.sleep(interval)``, the loop users
  write today (fixed interval, no deadline, no retries);
- ``poll_until fixed``: ``poll_until`` with the same fixed interval (``interval_max ==
  interval``): the cost of the library's loop, per poll, at equal polling;
- ``poll_until growing``: ``poll_until`` with its defaults (×1.5 up to 30 s): fewer polls,
  a larger overshoot for long tasks.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmark the checkout, not an installed copy

import requests  # noqa: E402

from requests_smartretry import poll_until, smart_session  # noqa: E402
from requests_smartretry.faultserver import FaultServer, RecordedRequest  # noqa: E402


def _task(server: FaultServer, sock: Any, request: RecordedRequest) -> None:
    ready_at = float(request.path.split("ready_at=", 1)[1])
    status = "succeeded" if time.time() >= ready_at else "running"
    server.send(sock, 200, json.dumps({"status": status}).encode(),
                {"Content-Type": "application/json"})


def _serve(ports: Any) -> None:
    with FaultServer(handlers={"/bench/tasks/": _task}) as server:
        ports.put(server.port)
        threading.Event().wait()


class _Timed:
    """Wraps ``session.get`` to add up the seconds spent in requests (per thread)."""

    def __init__(self, session: requests.Session) -> None:
        self.session = session
        self.seconds: list[float] = []

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        started = time.monotonic()
        try:
            return self.session.get(url, **kwargs)
        finally:
            self.seconds.append(time.monotonic() - started)


def _session(smart: bool, pool: int) -> requests.Session:
    if smart:
        return smart_session(pool_connections=1, pool_maxsize=pool, budget=None)
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool)
    session.mount("http://", adapter)
    return session


def _done(response: requests.Response) -> bool:
    return bool(response.json()["status"] == "succeeded")


def hand_written(session: requests.Session, url: str, interval: float) -> int:
    polls = 0
    while True:
        polls += 1
        if _done(session.get(url, timeout=30)):
            return polls
        time.sleep(interval)


def with_poll_until(growing: bool) -> Callable[[requests.Session, str, float], int]:
    def wait(session: requests.Session, url: str, interval: float) -> int:
        polls = [0]

        def fetch() -> requests.Response:
            polls[0] += 1
            return session.get(url)

        poll_until(fetch, done=_done, deadline=120.0, interval=interval,
                   interval_max=30.0 if growing else interval, run_in_thread=False,
                   operation_name="bench-wait", log=False)
        return polls[0]

    return wait


VARIANTS: dict[str, tuple[bool, Callable[[requests.Session, str, float], int]]] = {
    "hand-written": (False, hand_written),
    "poll_until fixed": (True, with_poll_until(False)),
    "poll_until growing": (True, with_poll_until(True)),
}


def run_fleet(name: str, port: int, delays: list[float], offsets: list[float],
              interval: float) -> dict[str, Any]:
    smart, wait = VARIANTS[name]
    plain = _session(smart, len(delays))
    session: Any = _Timed(plain)
    start = time.time() + 0.5  # every thread is started by then
    results: list[tuple[int, float]] = [(0, 0.0)] * len(delays)

    def one(index: int) -> None:
        submitted = start + offsets[index]
        ready_at = submitted + delays[index]
        url = f"http://127.0.0.1:{port}/bench/tasks/{index}?ready_at={ready_at:.6f}"
        time.sleep(max(0.0, submitted - time.time()))
        polls = wait(session, url, interval)
        results[index] = (polls, time.time() - ready_at)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(delays))]
    cpu = time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.time() - start
    cpu = time.process_time() - cpu
    plain.close()
    polls = [p for p, _ in results]
    overshoot = sorted(o for _, o in results)
    return {
        "variant": name,
        "polls_per_task": statistics.mean(polls),
        "overshoot_mean": statistics.mean(overshoot),
        "overshoot_p50": overshoot[len(overshoot) // 2],
        "overshoot_p99": overshoot[min(len(overshoot) - 1, int(len(overshoot) * 0.99))],
        "get_mean": statistics.mean(session.seconds),
        "wall": wall,
        "cpu": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=8.0)
    parser.add_argument("--spread", type=float, default=2.0,
                        help="tasks are submitted over this many seconds (a real fleet's "
                        "waits do not start in the same millisecond)")
    parser.add_argument("--seed", type=int, default=25)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    delays = [rng.uniform(args.min_seconds, args.max_seconds) for _ in range(args.tasks)]
    offsets = [rng.uniform(0.0, args.spread) for _ in range(args.tasks)]
    ports: Any = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=30)
        rows = [run_fleet(name, port, delays, offsets, args.interval) for name in VARIANTS]
    finally:
        server.terminate()
    print(f"{args.tasks} tasks (threads) submitted over {args.spread:g} s, each done "
          f"U({args.min_seconds:g}, {args.max_seconds:g}) s after it, interval "
          f"{args.interval:g} s\n")
    print("| variant | polls per task | overshoot mean | p50 | p99 | GET mean | fleet wall "
          "| client CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['variant']} | {row['polls_per_task']:.2f} | "
              f"{row['overshoot_mean']:.3f} s | {row['overshoot_p50']:.3f} s | "
              f"{row['overshoot_p99']:.3f} s | {row['get_mean'] * 1000:.1f} ms | "
              f"{row['wall']:.1f} s | {row['cpu']:.1f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
