"""How late a wait ends past its deadline, under hostile conditions.

    python benchmarks/wait_deadline.py                 # every scenario, markdown on stdout
    python benchmarks/wait_deadline.py --threads 50    # another fleet size

Each waiter runs ``poll_until`` over a ``smart_session()`` GET of a local server's ``/ok``
(never done) with ``deadline=--deadline`` and a fixed ``--interval``; it must raise
``PollDeadlineExceeded``.  Measured per scenario: how late it raised (p50 / p95 / max, ms
past the deadline) and how many polls (``fetch`` calls, timed in the client) started after
the deadline (must be 0).  Scenarios: one waiter; a log handler taking 20 ms per record
(logger at INFO: one progress line per poll, one ERROR line at the deadline); ``--threads``
waiters at once; the same with a thread spinning on the CPU (the GIL is shared); and the
slow handler with ``--threads`` waiters (stdlib logging serialises a handler: every
waiter's closing line queues behind the others').
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout

from requests_smartretry import PollDeadlineExceeded, poll_until, smart_session
from requests_smartretry.faultserver import FaultServer


class SlowHandler(logging.Handler):
    """A handler that takes 20 ms per record (a remote log sink, a slow disk)."""

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(0.02)


def run(url: str, threads: int, deadline: float, interval: float) -> dict[str, Any]:
    session = smart_session(pool_maxsize=max(threads, 10))
    lates: list[float] = []
    late_polls = [0]
    lock = threading.Lock()

    def one() -> None:
        starts: list[float] = []

        def fetch() -> Any:
            starts.append(time.monotonic())
            return session.get(url)

        began = time.monotonic()
        try:
            poll_until(fetch, done=lambda r: False, deadline=deadline, interval=interval,
                       interval_multiplier=1.0, interval_max=interval)
        except PollDeadlineExceeded:
            pass
        late = time.monotonic() - began - deadline
        with lock:
            lates.append(late)
            late_polls[0] += sum(1 for s in starts if s > began + deadline)

    workers = [threading.Thread(target=one) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    lates.sort()

    def ms(q: float) -> float:
        return 1000 * lates[min(len(lates) - 1, int(q * len(lates)))]

    return {"p50": ms(0.5), "p95": ms(0.95), "max": 1000 * lates[-1],
            "late_polls": late_polls[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()
    logger = logging.getLogger("requests_smartretry")
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    scenarios = [("1 waiter", 1, False, False), ("1 waiter, slow log handler", 1, True, False),
                 (f"{args.threads} waiters", args.threads, False, False),
                 (f"{args.threads} waiters, spinning CPU thread", args.threads, False, True),
                 (f"{args.threads} waiters, slow log handler", args.threads, True, False)]
    print(f"deadline {args.deadline:g} s, interval {args.interval:g} s\n")
    print("| scenario | late p50 ms | late p95 ms | late max ms | polls started after it |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with FaultServer() as server:
        url = server.url("/ok")
        for name, threads, slow, spinning in scenarios:
            handler = SlowHandler()
            if slow:
                logger.addHandler(handler)
                logger.setLevel(logging.INFO)
            spinner = threading.Thread(target=spin, daemon=True)
            if spinning:
                stop.clear()
                spinner.start()
            try:
                result = run(url, threads, args.deadline, args.interval)
            finally:
                stop.set()
                logger.removeHandler(handler)
                logger.setLevel(logging.NOTSET)
            print(f"| {name} | {result['p50']:.0f} | {result['p95']:.0f} | "
                  f"{result['max']:.0f} | {result['late_polls']} |")


if __name__ == "__main__":
    main()
