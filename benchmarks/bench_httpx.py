"""The httpx transport: success-path cost of ``smart_client()`` over a plain ``httpx.Client``,
and how close to its deadline it cuts a dripping body.

    pip install -e ".[bench,httpx]"
    python benchmarks/bench_httpx.py              # ~1 minute: markdown on stdout
    python benchmarks/bench_httpx.py --quick      # a smoke run

The same method as ``benchmarks/run.py`` (its server process, its interleaved rounds and
its statistics, imported from there): each round runs ``per_round`` GETs of ``/ok`` with
each client, in a rotated order, and the ratio is the median of the per-round paired
ratios of client CPU (``time.process_time``, every thread of the process, our watchdog
included), given with its interquartile range.  Both clients use the same per-operation
timeouts and pool size; ours runs with every default on (log lines built for a
``NullHandler``, statistics, retry budget, the deadline watch).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # benchmark the checkout, not an installed copy

import httpx  # noqa: E402
from run import (  # noqa: E402
    ATTEMPTS,
    DRIP_PATH,
    DRIP_TIMEOUT,
    POOL,
    TIMEOUT,
    Client,
    Server,
    bench_overhead,
    ratio_cell_iqr,
    server_process,
    spread,
)

from requests_smartretry.httpx import AttemptDeadlineExceeded, smart_client  # noqa: E402

VARIANTS = ("httpx plain", "httpx ours")


def make_client(name: str) -> Client:
    """A ``GET url`` function for variant ``name``, on its own ``httpx.Client``."""
    limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    if name == "httpx plain":
        client: httpx.Client = httpx.Client(timeout=TIMEOUT, limits=limits)
    else:
        client = smart_client(max_retries=ATTEMPTS - 1, timeout=TIMEOUT, backoff_base=0.001,
                              limits=limits)
    # run.Client only needs .get and a .session to close.
    return Client(name, client.get, client)  # type: ignore[arg-type]


def bench_drip(server: Server, runs: int) -> list[float]:
    """Milliseconds past the deadline at which a body dripping 1 byte / 50 ms is cut."""
    client = smart_client(max_retries=0, timeout=DRIP_TIMEOUT)
    overshoot_ms = []
    for _ in range(runs):
        started = time.perf_counter()
        try:
            client.get(server.url(DRIP_PATH))
            raise AssertionError("the drip was expected to be cut")
        except AttemptDeadlineExceeded:
            overshoot_ms.append((time.perf_counter() - started - DRIP_TIMEOUT) * 1e3)
    client.close()
    return overshoot_ms


def report(success: dict[str, Any], overshoot_ms: list[float], command: str) -> str:
    lines = [
        "## httpx: `smart_client()` vs plain `httpx.Client`",
        "",
        f"`{command}`; {success['rounds']} interleaved rounds × {success['per_round']} GETs "
        f"of `/ok`; load before/after: {success['load']}; httpx {httpx.__version__}.",
        "",
        "| client | wall µs/request | wall × plain (IQR; min–max) | CPU µs/request "
        "| CPU × plain (IQR; min–max) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in VARIANTS:
        lines.append(
            f"| {name} | {spread(success['wall_us'][name])} "
            f"| {ratio_cell_iqr(success['wall_ratio'][name])} "
            f"| {spread(success['cpu_us'][name])} "
            f"| {ratio_cell_iqr(success['cpu_ratio'][name])} |")
    lines += [
        "",
        f"Deadline: `{DRIP_PATH}` with `timeout={DRIP_TIMEOUT}`: cut "
        f"{spread(overshoot_ms, '{:.1f}')} ms after the deadline "
        f"(median (min–max) of {len(overshoot_ms)} runs; plain httpx waits the whole 5 s drip).",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run")
    args = parser.parse_args(argv)
    logging.getLogger().addHandler(logging.NullHandler())
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with server_process() as server:
        success = bench_overhead(server, 60 if args.quick else 400, 25 if args.quick else 50,
                                 names=VARIANTS, make=make_client, base="httpx plain")
        overshoot_ms = bench_drip(server, 3 if args.quick else 10)
    success["load"] = f"{load_before} / " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    command = "python benchmarks/bench_httpx.py" + (" --quick" if args.quick else "")
    print(report(success, overshoot_ms, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
