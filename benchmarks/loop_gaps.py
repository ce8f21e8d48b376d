"""How long the event loop is held up at most, measured by a ticker task (every 10 ms)
while async calls run: during a 1 s retry wait, and with a fleet store whose Redis answers
1 s late (a slow proxy in front of a real redis-server), beside the ticker alone (what the
machine's load costs by itself).

    python benchmarks/loop_gaps.py            # 5 runs of each: markdown on stdout
    python benchmarks/loop_gaps.py --runs 10

Needs redis-server on PATH for the Redis row (tests/redis_server.py starts it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # measure the checkout, not an installed copy

from requests_smartretry import CircuitBreaker, RetryBudget  # noqa: E402
from requests_smartretry.faultserver import FaultServer  # noqa: E402
from requests_smartretry.httpx import smart_async_client  # noqa: E402
from tests.test_async import Ticker  # noqa: E402


async def _alone() -> float:
    async with Ticker() as ticker:
        await asyncio.sleep(1.2)
    return ticker.longest


def _retry_wait(server: FaultServer) -> Callable[[], Any]:
    async def run() -> float:
        async with smart_async_client(log=False) as client, Ticker() as ticker:
            key = uuid.uuid4().hex
            assert (await client.get(server.url(f"/seq/{key}?steps=503,ok"))).status_code == 200
        return ticker.longest
    return run


def _slow_redis(server: FaultServer, redis_port: int) -> Callable[[], Any]:
    from requests_smartretry.redis_state import RedisStateStore
    from tests.redis_server import SlowProxy

    async def run() -> float:
        with SlowProxy(redis_port, delay=1.0) as proxy:
            store = RedisStateStore(proxy.url, prefix=f"gaps-{uuid.uuid4().hex[:8]}",
                                    retry_interval=60.0)
            try:
                async with smart_async_client(
                        breaker=CircuitBreaker(failure_threshold=50), budget=RetryBudget(),
                        state=store, log=False, backoff_base=0.05) as client, \
                        Ticker() as ticker:
                    for _ in range(5):
                        key = uuid.uuid4().hex
                        url = server.url(f"/seq/{key}?steps=503,ok")
                        assert (await client.get(url)).status_code == 200
            finally:
                store.close()
        return ticker.longest
    return run


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    rows: dict[str, list[float]] = {}
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with FaultServer() as server:
        scenarios: dict[str, Callable[[], Any]] = {
            "ticker alone (the machine's load)": _alone,
            "a 503, a 1 s retry wait, a 200": _retry_wait(server),
        }
        try:
            from tests.redis_server import RedisServer

            redis: Any = RedisServer().start()
        except Exception as exc:  # no redis-server binary
            print(f"(no Redis row: {exc})", file=sys.stderr)
            redis = None
        if redis is not None:
            port = int(redis.url.rsplit(":", 1)[1].split("/")[0])
            scenarios["5 retried calls, Redis 1 s late (time_budget 50 ms)"] = _slow_redis(
                server, port)
        try:
            for _ in range(args.runs):  # interleaved
                for name, scenario in scenarios.items():
                    rows.setdefault(name, []).append(asyncio.run(scenario()) * 1000)
        finally:
            if redis is not None:
                redis.kill()
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"`python benchmarks/loop_gaps.py --runs {args.runs}`; load before/after: "
          f"{load_before} / {load_after}\n")
    print("| scenario | longest loop gap, ms: median (min–max) |")
    print("| --- | --- |")
    for name, gaps in rows.items():
        ordered = sorted(gaps)
        print(f"| {name} | {ordered[len(ordered) // 2]:.1f} ({ordered[0]:.1f}–{ordered[-1]:.1f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
