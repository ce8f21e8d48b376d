"""asyncio: success-path CPU of ``smart_async_client()`` over a plain ``httpx.AsyncClient``,
beside tenacity's and stamina's async decorators around the plain client, in the same run.

    pip install -e ".[bench,httpx]"
    python benchmarks/bench_async.py              # ~1 minute: markdown on stdout
    python benchmarks/bench_async.py --quick      # a smoke run

The method of ``benchmarks/run.py`` (its server process and statistics, imported from
there), on one event loop: each round awaits ``per_round`` GETs of ``/ok`` with each client
in turn, in a rotated order; the ratio is the median of the per-round paired ratios of
client CPU (``time.process_time``: every thread of the process), given with its
interquartile range and extremes.  Every client uses the same per-operation timeouts and
pool size; tenacity and stamina wrap the plain client's GET (raising for 5xx/429 as they
would have to); ours runs with every default on (log lines built for a ``NullHandler``,
statistics, retry budget, the attempt deadline).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # benchmark the checkout, not an installed copy

import httpx  # noqa: E402
import stamina  # noqa: E402
import tenacity  # noqa: E402
from run import (  # noqa: E402
    ATTEMPTS,
    POOL,
    TIMEOUT,
    _paired,
    ratio_cell_iqr,
    rotated,
    server_process,
    spread,
)

from requests_smartretry.httpx import smart_async_client  # noqa: E402

VARIANTS = ("plain", "tenacity", "stamina", "ours")
Get = Callable[[str], Awaitable[Any]]


def _raise_for_retryable(response: httpx.Response) -> httpx.Response:
    if response.status_code in (429, 500, 502, 503, 504):
        response.raise_for_status()
    return response


def make_client(name: str) -> tuple[Get, Any]:
    """(an async ``GET url`` function, the client to close) for variant ``name``."""
    limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    if name == "ours":
        client: Any = smart_async_client(max_retries=ATTEMPTS - 1, timeout=TIMEOUT,
                                         backoff_base=0.001, limits=limits)
        return client.get, client
    plain = httpx.AsyncClient(timeout=TIMEOUT, limits=limits)

    async def plain_get(url: str) -> httpx.Response:
        return _raise_for_retryable(await plain.get(url))

    if name == "plain":
        return plain_get, plain
    if name == "tenacity":
        get: Get = tenacity.retry(
            stop=tenacity.stop_after_attempt(ATTEMPTS),
            wait=tenacity.wait_exponential(multiplier=0.001, max=0.004),
            retry=tenacity.retry_if_exception_type(httpx.HTTPError), reraise=True,
        )(plain_get)
        return get, plain
    if name == "stamina":
        get = stamina.retry(on=httpx.HTTPError, attempts=ATTEMPTS, timeout=None,
                            wait_initial=0.001, wait_max=0.004, wait_jitter=0)(plain_get)
        return get, plain
    raise ValueError(f"unknown client {name!r}")


async def bench_overhead(url: str, rounds: int, per_round: int) -> dict[str, Any]:
    """(wall, CPU) of each variant's ``per_round`` GETs, round after round, rotated."""
    made = {name: make_client(name) for name in VARIANTS}
    for get, _ in made.values():  # warm: connections, imports, caches
        for _ in range(50):
            await get(url)
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for index in range(rounds):
        for name in rotated(VARIANTS, index):
            get = made[name][0]
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(per_round):
                await get(url)
            seconds[name].append((time.perf_counter() - w0, time.process_time() - c0))
    for _, client in made.values():
        await client.aclose()
    return _paired(seconds, per_round, rounds, "plain")


def report(success: dict[str, Any], command: str) -> str:
    lines = [
        "## asyncio: `smart_async_client()` vs plain `httpx.AsyncClient`, tenacity, stamina",
        "",
        f"`{command}`; {success['rounds']} interleaved rounds × {success['per_round']} GETs "
        f"of `/ok` on one event loop; load before/after: {success['load']}; "
        f"httpx {httpx.__version__}, {success['versions']}.",
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
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run")
    args = parser.parse_args(argv)
    logging.getLogger().addHandler(logging.NullHandler())
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with server_process() as server:
        success = asyncio.run(bench_overhead(server.url("/ok"), 40 if args.quick else 300,
                                             25 if args.quick else 50))
    from importlib.metadata import version

    success["versions"] = ", ".join(f"{n} {version(n)}" for n in ("tenacity", "stamina"))
    success["load"] = f"{load_before} / " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    command = "python benchmarks/bench_async.py" + (" --quick" if args.quick else "")
    print(report(success, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
