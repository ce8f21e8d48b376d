"""Why ours costs more CPU than its instruction count says: a calibration against ballast.

    python benchmarks/cpu_floor.py                 # size the ballast, then hot and loopback
    python benchmarks/cpu_floor.py --rounds 1000   # more loopback rounds (tighter medians)
    python benchmarks/cpu_floor.py --skip-callgrind --loop-units 65 --spread-units 27

§1's instruction ratio (``benchmarks/callgrind.py``) nets two things: what our layer adds
(its own Python frames) and what it saves requests (the URL parsing the adapter caches).
This script separates them and asks what an instruction of each costs in CPU:

1. **Own instructions** (callgrind, no network): ``adapter.send`` over a canned 200
   (``run.py``'s stub transport), ours against ``HTTPAdapter``'s, with every default on
   and with stats, budget and log off.
2. **Ballast of the same size**: ``HTTPAdapter`` subclasses that run generic Python work
   before sending — one small function called N times ("loop"), or N distinct small
   functions called once each ("spread", a footprint of many code objects, as ours has).
   N is chosen so that the ballast adds, in callgrind, what ours adds.
3. **CPU, hot** (no network, interleaved rounds of ``send`` on the stub): µs added per send.
4. **CPU, loopback** (§1's clients and server, interleaved rounds of GETs): µs added per
   GET and the ratio to plain.

If ours and the ballast add the same instructions but ours adds more CPU, the difference
is in how our instructions run (allocation, clock reads, context variables, branch
patterns), not in how many there are; if the loopback figure is a multiple of the hot one,
the request's blocking read (a context switch per GET) makes the added code run cold.
The two together say how far below today's own instructions the layer must go for a CPU
goal.  Needs valgrind for step 1 (or ``--skip-callgrind`` with the units given).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import requests  # noqa: E402
import run  # noqa: E402  # §1's clients, server and interleaving
from requests.adapters import HTTPAdapter  # noqa: E402

# -- the ballast: generic Python work of a chosen size ------------------------------------


class _Item:
    __slots__ = ("a", "b", "c")

    def __init__(self, index: int) -> None:
        self.a, self.b, self.c = index, index + 1, {"k": index}


def _unit(item: _Item) -> int:
    return item.a + item.b + item.c["k"]


def _spread_unit(index: int) -> Callable[[_Item, int], int]:
    """A distinct function (its own code object) of the same shape for each ``index``."""
    source = (f"def unit_{index}(item, carry):\n"
              f"    x = item.a + {index}\n"
              f"    y = item.b * 2\n"
              f"    z = item.c.get('k', {index})\n"
              f"    if x > y:\n"
              f"        x, y = y, x\n"
              f"    kept = (x, y, z, carry)\n"
              f"    return len(kept) + x - y + z\n")
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<ballast unit {index}>", "exec"), namespace)
    return namespace[f"unit_{index}"]  # type: ignore[no-any-return]


_ITEMS = [_Item(i) for i in range(256)]
_SPREAD = [_spread_unit(i) for i in range(256)]


class LoopBallast(HTTPAdapter):
    """``HTTPAdapter`` that calls one small function ``units`` times before each send."""

    units = 65

    def send(self, request: requests.PreparedRequest, *args: Any,  # type: ignore[override]
             **kwargs: Any) -> requests.Response:
        item, carry = _ITEMS[0], 0
        for _ in range(self.units):
            carry += _unit(item)
        return super().send(request, *args, **kwargs)


class SpreadBallast(HTTPAdapter):
    """``HTTPAdapter`` that calls ``units`` distinct small functions before each send."""

    units = 27

    def send(self, request: requests.PreparedRequest, *args: Any,  # type: ignore[override]
             **kwargs: Any) -> requests.Response:
        carry = 0
        for unit, item in zip(_SPREAD[:self.units], _ITEMS):
            carry += unit(item, carry)
        return super().send(request, *args, **kwargs)


class SpreadAfterBallast(SpreadBallast):
    """The spread ballast run after the response came back (after the blocking read),
    where ours does much of its work (classification, statistics, budget)."""

    def send(self, request: requests.PreparedRequest, *args: Any,  # type: ignore[override]
             **kwargs: Any) -> requests.Response:
        response = super(SpreadBallast, self).send(request, *args, **kwargs)
        carry = 0
        for unit, item in zip(_SPREAD[:self.units], _ITEMS):
            carry += unit(item, carry)
        return response


BALLASTS: dict[str, type[HTTPAdapter]] = {"ballast, loop": LoopBallast,
                                         "ballast, spread": SpreadBallast,
                                         "ballast, spread after the response": SpreadAfterBallast}
BARE = "ours, stats/budget/log off"


def set_units(loop: Optional[int], spread: Optional[int],
              after: Optional[int] = None) -> None:
    """The ballasts' sizes (also read by ``callgrind.py``'s children from the
    environment: ``BALLAST_UNITS=loop,spread,after``)."""
    if loop is not None:
        LoopBallast.units = loop
    if spread is not None:
        SpreadBallast.units = spread
    SpreadAfterBallast.units = SpreadBallast.units if after is None else after


if os.environ.get("BALLAST_UNITS"):
    set_units(*(int(v) for v in os.environ["BALLAST_UNITS"].split(",")))


# -- the same clients over the canned transport -------------------------------------------

_REQUEST = requests.Request("GET", "http://127.0.0.1:9/ok").prepare()


class StubClient:
    """A client whose ``get`` is one ``adapter.send`` over §1's canned 200 (the URL is
    not used): what the adapter layer itself costs."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "plain":
            self.adapter: HTTPAdapter = run._StubTransport()
        elif name in BALLASTS:
            self.adapter = type(f"Stub{BALLASTS[name].__name__}",
                                (BALLASTS[name], run._StubTransport), {})()
        elif name in ("ours", BARE):
            options = run.OURS_VARIANTS[name]() if name == BARE else {}
            self.adapter = run._StubbedOurs(max_retries=run.ATTEMPTS - 1, timeout=run.TIMEOUT,
                                            **options)
        else:
            raise ValueError(f"unknown stub client {name!r}")

    def get(self, url: str = "") -> requests.Response:
        return self.adapter.send(_REQUEST, timeout=run.TIMEOUT)

    def close(self) -> None:
        self.adapter.close()


def loopback_client(name: str) -> run.Client:
    """§1's client ``name``, or a ballast adapter on its own session."""
    if name in BALLASTS:
        session = run._session(BALLASTS[name](pool_maxsize=run.POOL))
        return run.Client(name, lambda url: session.get(url, timeout=run.TIMEOUT), session)
    return run.make_client(name)


# -- the measurements ---------------------------------------------------------------------

def own_instructions(names: list[str], count: int) -> dict[str, float]:
    """Instructions per stub send of each client (callgrind, ``callgrind.py``'s children)."""
    import callgrind

    units = f"{LoopBallast.units},{SpreadBallast.units},{SpreadAfterBallast.units}"
    with tempfile.TemporaryDirectory(prefix="cpu-floor-") as tmp:
        return {name: callgrind.measure(f"stub {name}", "", count, 0.0, Path(tmp), False,
                                        False, {"BALLAST_UNITS": units})["per_request"]["Ir"]
                for name in names}


def hot_cpu(names: list[str], rounds: int, per_round: int) -> dict[str, list[float]]:
    """CPU µs per stub send, interleaved rounds."""
    clients = {name: StubClient(name) for name in names}
    for client in clients.values():
        for _ in range(200):
            client.get()
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in run.rotated(tuple(names), index):
            get = clients[name].get
            started = time.process_time()
            for _ in range(per_round):
                get()
            cpu[name].append((time.process_time() - started) / per_round * 1e6)
    return cpu


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, statistics.median(values), q3


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=400,
                        help="loopback rounds of 50 GETs per client (default 400)")
    parser.add_argument("--hot-rounds", type=int, default=30,
                        help="hot rounds of 3000 sends per client (default 30)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="stub sends per client under callgrind (default 2000)")
    parser.add_argument("--skip-callgrind", action="store_true",
                        help="no step 1: the ballasts keep --loop-units / --spread-units")
    parser.add_argument("--loop-units", type=int, help="size of the loop ballast")
    parser.add_argument("--spread-units", type=int, help="size of the spread ballast")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger().addHandler(logging.NullHandler())  # as run.py: records built
    set_units(args.loop_units, args.spread_units, args.spread_units)
    names = ["plain", "ours", BARE, *BALLASTS]
    own: dict[str, float] = {}
    if not args.skip_callgrind:
        print("callgrind: own instructions per send...", file=sys.stderr, flush=True)
        own = own_instructions(names, args.requests)
        target = own["ours"] - own["plain"]
        # Size each ballast to what ours adds (it grows linearly with its units), then
        # measure it again at that size.
        set_units(*(max(1, round(unit.units * target / (own[name] - own["plain"])))
                    for name, unit in BALLASTS.items()))
        own.update(own_instructions(list(BALLASTS), args.requests))
    print("hot CPU (stub transport)...", file=sys.stderr, flush=True)
    hot = hot_cpu(names, args.hot_rounds, 3000)
    print("loopback CPU (§1's server)...", file=sys.stderr, flush=True)
    loop_names = ("plain", "ours", BARE, *BALLASTS, "backoff")
    with run.server_process() as server:
        loopback = run.bench_overhead(server, args.rounds, 50, names=loop_names,
                                      make=loopback_client)
    plain_us = statistics.median(loopback["cpu_us"]["plain"])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nCPU per own instruction (git {_git()}; ballast units: loop "
          f"{LoopBallast.units}, spread {SpreadBallast.units} (after: "
          f"{SpreadAfterBallast.units}); hot: {args.hot_rounds} rounds × 3000 sends, minimum; "
          f"loopback: {args.rounds} rounds × 50 GETs, plain {plain_us:.0f} µs CPU per GET; "
          f"load {load})")
    print("| client | own Ir per send (added) | hot CPU µs added | loopback CPU × plain "
          "(IQR) | loopback µs added | µs per 10 k added Ir, hot / loopback |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in loop_names:
        added_ir = own.get(name, 0.0) - own.get("plain", 0.0) if name in own else None
        added_hot = min(hot[name]) - min(hot["plain"]) if name in hot else None
        q1, ratio, q3 = quartiles(loopback["cpu_ratio"][name])
        added_loop = (ratio - 1.0) * plain_us
        per = "–"
        if added_ir and added_hot is not None and name != "plain":
            per = f"{added_hot / added_ir * 1e4:.2f} / {added_loop / added_ir * 1e4:.2f}"
        print(f"| {name} | "
              + ("–" if added_ir is None else f"{own[name]:,.0f} ({added_ir:+,.0f})")
              + " | " + ("–" if added_hot is None else f"{added_hot:+.2f}")
              + f" | {ratio:.3f}× ({q1:.3f}–{q3:.3f}) | {added_loop:+.1f} | {per} |")
    return 0


def _git() -> str:
    import callgrind

    return callgrind._git_head()


if __name__ == "__main__":
    raise SystemExit(main())
