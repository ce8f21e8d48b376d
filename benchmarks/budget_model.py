"""The retry budget's arithmetic, worked out by simulation (no network, no waiting).

    python benchmarks/budget_model.py            # the table quoted in budget.py and README

Simulated time drives the library's own :class:`~requests_smartretry.RetryBudget` (its
``clock=`` is the simulation's clock) through the events the retry loop would send it, for
``max_retries=1`` (the seed's one retry).  Each of ``threads`` callers starts its calls on
an even schedule of ``rate`` calls per second in total (a caller still busy with a call
starts the next one when it is free, so one sequential caller with 1 s backoff cannot
exceed ~1 call per second while it retries).  An attempt takes 1 ms; the wait before the
retry is 0 or the default 1 s.

Failure models: ``outage`` every attempt fails; ``brownout`` each attempt fails with
probability 0.5 (seeded); ``storm`` 2 of every 3 calls fail once and succeed on retry.

Printed per cell: server attempts per call, and calls lost to the budget (calls that failed
although the retry the budget refused would have succeeded), over ``--calls`` calls.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from requests_smartretry import AttemptEvent, EventKind, RetryBudget

SERVICE = "https://api.example.com"
ATTEMPT_S = 0.001


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _event(kind: EventKind, attempt: int, call_id: int) -> AttemptEvent:
    return AttemptEvent(kind=kind, operation="model", service=SERVICE, attempt=attempt,
                        max_attempts=2, call_id=call_id)


def simulate(model: str, threads: int, rate: float, backoff: float, calls: int,
             budget: Optional[RetryBudget] = None, seed: int = 7) -> tuple[float, int]:
    """(attempts per call, calls lost to the budget) for one scenario."""
    clock = Clock()
    if budget is None:
        budget = RetryBudget(clock=clock)
    else:
        budget._clock = clock
    rng = random.Random(seed)
    attempts = lost = 0
    issued = 0

    def fails(call: int, attempt: int) -> bool:
        if model == "outage":
            return True
        if model == "brownout":
            return rng.random() < 0.5
        return attempt == 1 and call % 3 != 2  # storm: 2 of 3 calls fail once

    def caller(index: int) -> Iterator[float]:
        nonlocal attempts, lost, issued
        interval = threads / rate
        scheduled = index / rate
        while True:
            if clock.now < scheduled:
                yield scheduled
            if issued >= calls:
                return
            call = issued
            issued += 1
            scheduled += interval
            budget(_event(EventKind.START, 1, call))
            attempts += 1
            yield clock.now + ATTEMPT_S
            if not fails(call, 1):
                budget(_event(EventKind.SUCCESS, 1, call))
                continue
            budget(_event(EventKind.FAILURE, 1, call))
            if not budget.allow_retry(SERVICE):
                lost += not fails(call, 2)
                continue
            yield clock.now + backoff
            budget(_event(EventKind.START, 2, call))
            attempts += 1
            yield clock.now + ATTEMPT_S
            budget(_event(EventKind.FAILURE if fails(call, 2) else EventKind.SUCCESS, 2,
                          call))

    queue: list[tuple[float, int, Iterator[float]]] = []
    for index in range(threads):
        heapq.heappush(queue, (0.0, index, caller(index)))
    while queue:
        when, index, gen = heapq.heappop(queue)
        clock.now = when
        wake = next(gen, None)
        if wake is not None:
            heapq.heappush(queue, (wake, index, gen))
    return attempts / calls, lost


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--ratio", type=float, help="RetryBudget(ratio=...)")
    parser.add_argument("--max-tokens", type=float, help="RetryBudget(max_tokens=...)")
    parser.add_argument("--min-per-second", type=float,
                        help="RetryBudget(min_per_second=...)")
    args = parser.parse_args(argv)
    options = {name: value for name, value in (
        ("ratio", args.ratio), ("max_tokens", args.max_tokens),
        ("min_per_second", args.min_per_second)) if value is not None}
    rates = (1, 10, 20, 100, 1000)
    shown = RetryBudget(**options)
    print(f"{shown!r}, max_retries=1, {args.calls} calls per cell: "
          "attempts per call (calls lost to the budget)\n")
    print("| failures | threads | backoff | " + " | ".join(f"{r}/s" for r in rates) + " |")
    print("| --- | --- | --- |" + " --- |" * len(rates))
    for model in ("outage", "brownout", "storm"):
        for threads in (1, 16):
            for backoff in (0.0, 1.0):
                cells = []
                for rate in rates:
                    per_call, lost = simulate(model, threads, rate, backoff, args.calls,
                                              RetryBudget(**options))
                    cells.append(f"{per_call:.3f} ({lost})")
                print(f"| {model} | {threads} | {backoff:g} s | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
