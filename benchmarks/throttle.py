"""Throttling: a fleet against a rate-limited vendor, the success-path cost of a local
throttle, and the Redis round trips a shared throttle costs per request.

    python benchmarks/throttle.py                 # 60 s per fleet variant: markdown on stdout
    python benchmarks/throttle.py --seconds 15    # a quicker run
    python benchmarks/throttle.py --plot benchmarks/bench_throttle.png

1. Fleet: a fake vendor (``tests/fakes/ratelimited.py``, its own process) executes at most
   20 requests in any 1 s window and answers 429 / 50429 beyond; 4 processes × 16 threads
   call it in a closed loop for ``--seconds``.  Per variant: the share of the vendor's
   answers that were throttling answers, goodput (successful calls/s ÷ 20), p50/p99 call
   time (successful calls), and the calls that failed.  Variants (at most 4 attempts each):

   - ``plain retries``: requests' ``HTTPAdapter(max_retries=Retry(total=3,
     backoff_factor=0.5, status_forcelist=[429]))``, what users write today;
   - ``ours, no throttle``: ``smart_session(max_retries=3)`` (backoff, budget);
   - ``ours, adaptive (local)``: ``+ throttle=Throttle(adaptive=True)``, each process learns;
   - ``ours, adaptive (shared)``: the same throttle with ``state=`` one redis-server;
   - ``ours, rate=19 + adaptive (shared)``: ``Throttle(rate=19, burst=1, adaptive=True)``,
     the vendor's documented quota configured a little under it (a vendor's window and
     clock are not ours: at exactly 20/s one request in a window lands on its edge), the
     adaptive part for what the documentation does not say.

   The throttled share and goodput are also given for the run after its first 5 s (the
   steady state: an adaptive throttle without a rate learns from the first burst).

2. Success-path cost: CPU µs per ``adapter.send`` over a canned transport (no network),
   without a throttle, with ``Throttle(rate=1e9)`` and with ``Throttle(max_in_flight=1000)``
   (never waiting), interleaved rounds in one process; the difference is what the throttle
   adds per request.

3. Redis round trips per request with a shared ``Throttle(rate=1000)`` (and with
   ``max_in_flight=100`` too) at 1, 10 and 100 requests/s from one process (counted with
   Redis' own ``INFO commandstats`` ``evalsha`` calls).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # benchmark the checkout, not an installed copy

import requests  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402
from urllib3.util.retry import Retry  # noqa: E402

from requests_smartretry import SmartRetryAdapter, Throttle, smart_session  # noqa: E402

sys.path.insert(0, str(HERE))
from run import _StubTransport  # noqa: E402  # the canned 200 of section 1's pure overhead

VENDOR_RATE = 20
PROCESSES = 4
THREADS = 16
VARIANTS = ("plain retries", "ours, no throttle", "ours, adaptive (local)",
            "ours, adaptive (shared)", "ours, rate=19 + adaptive (shared)")


# -- 1. the fleet ------------------------------------------------------------------------------

def _session(variant: str, redis_url: Optional[str], prefix: str) -> requests.Session:
    if variant == "plain retries":
        session = requests.Session()
        adapter = HTTPAdapter(pool_maxsize=THREADS, max_retries=Retry(
            total=3, backoff_factor=0.5, status_forcelist=[429], raise_on_status=False))
        session.mount("http://", adapter)
        return session
    options: dict[str, Any] = {"max_retries": 3, "log": False, "pool_maxsize": THREADS}
    if variant != "ours, no throttle":
        options["throttle"] = Throttle(adaptive=True) if "rate=19" not in variant \
            else Throttle(rate=19.0, burst=1, adaptive=True)
    if "shared" in variant:
        from requests_smartretry.redis_state import RedisStateStore

        options["state"] = RedisStateStore(redis_url, prefix=prefix)  # type: ignore[arg-type]
    return smart_session(**options)


class _Trace:
    """``--trace``: how each turn of a shared throttle came to go (``booked``: a turn the
    shared schedule booked for it; ``leased``: one of a batch its process booked;
    ``local``: paced locally, Redis could not serve; ``unasked``: not paced, as Redis last
    said, without asking), the round trips' times and outcomes, and the WARNINGs logged.
    The benchmark's workers log nothing otherwise."""

    def __init__(self) -> None:
        import logging

        from requests_smartretry import throttle as local
        from requests_smartretry.redis_state import throttle as shared

        self.sends: list[tuple[float, str]] = []  # (wall time, how) per turn that went
        self.trips: list[tuple[float, str, float, str]] = []  # (wall, op, seconds, outcome)
        self.warnings: list[tuple[float, str]] = []
        how: dict[int, str] = {}
        current = threading.local()
        trace = self
        step, turn_, trip, leased = (local.Turn.step, shared.SharedPaces.throttle_turn,
                                     shared.SharedPaces._throttle_trip,
                                     shared.SharedPaces._leased)

        def traced_step(turn: Any, now: float) -> Optional[float]:
            result = step(turn, now)
            if result is None:
                unasked = "unasked" if turn.throttle.store is not None else "local (no store)"
                trace.sends.append((time.time(), how.pop(id(turn), unasked)))
            return result

        def traced_turn(store: Any, turn: Any, *args: Any) -> Any:
            current.turn = turn
            result = turn_(store, turn, *args)
            if result is False:
                how[id(turn)] = "local"
            return result

        def traced_trip(store: Any, service: str, settings: Any, op: str, *args: Any,
                        **kwargs: Any) -> Any:
            started = time.monotonic()
            outcome = "none"
            try:
                reply = trip(store, service, settings, op, *args, **kwargs)
                if reply is not None:
                    outcome = "ok"
                    turn = getattr(current, "turn", None)
                    if kwargs.get("count") and reply[2] > 0 and turn is not None:
                        how[id(turn)] = "booked"
                return reply
            except Exception as exc:
                outcome = type(exc).__name__
                raise
            finally:
                trace.trips.append((time.time(), op, time.monotonic() - started, outcome))

        def traced_leased(pace: Any, turn: Any, mono: float, left: float) -> Any:
            token = turn.token
            result = leased(pace, turn, mono, left)
            if result is not False and not token:
                how[id(turn)] = "leased"
            return result

        local.Turn.step = traced_step  # type: ignore[method-assign]
        shared.SharedPaces.throttle_turn = traced_turn  # type: ignore[method-assign]
        shared.SharedPaces._throttle_trip = traced_trip  # type: ignore[method-assign]
        shared.SharedPaces._leased = staticmethod(traced_leased)  # type: ignore[method-assign]

        class Counted(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                trace.warnings.append((time.time(), record.getMessage()[:160]))

        logging.getLogger("requests_smartretry").addHandler(Counted(logging.WARNING))

    def result(self) -> dict[str, Any]:
        return {"sends": self.sends, "trips": self.trips, "warnings": self.warnings}


def _watch_decreases(redis_url: str, prefix: str, stop: threading.Event,
                     seen: list[tuple[float, float]]) -> None:
    """``--trace``: the shared rate's decreases (wall time, W) as Redis holds them, looked
    at every 20 ms (a decrease followed by another within 20 ms shows as the last)."""
    import redis

    inspect = redis.Redis.from_url(redis_url)
    last = None
    while not stop.wait(0.02):
        for key in inspect.scan_iter(match=f"{prefix}:pace:*"):
            wmax, tfail = inspect.hmget(key, "wmax", "tfail")
            if wmax is not None and (wmax, tfail) != last:
                last = (wmax, tfail)
                seen.append((time.time(), float(wmax)))


def _trace_report(variant: str, traces: list[dict[str, Any]], counts: dict[str, Any],
                  start_at: float, decreases: list[tuple[float, float]]) -> dict[str, Any]:
    """One line per variant (on stderr): the turns by how they went, in all and before the
    vendor's first throttling answer, the round trips' times and the WARNINGs."""
    first_429 = min((stamp for stamp, refused in counts["answered"] if refused), default=None)
    sends = [s for trace in traces for s in trace["sends"]]
    trips = [t for trace in traces for t in trace["trips"]]
    kinds = sorted({how for _, how in sends})
    durations = sorted(t[2] for t in trips)

    def pct(q: float) -> float:
        return round(durations[min(len(durations) - 1, int(q * len(durations)))] * 1000, 1) \
            if durations else 0.0

    until = first_429 if first_429 is not None else start_at + 2.0
    return {
        "variant": variant,
        "first_throttled_at": None if first_429 is None else round(first_429 - start_at, 3),
        "executed_before_it": sum(1 for stamp, refused in counts["answered"]
                                  if not refused and stamp < until),
        "sends": {how: sum(1 for _, h in sends if h == how) for how in kinds},
        "sends_before_it": {how: sum(1 for stamp, h in sends if h == how and stamp < until)
                            for how in kinds},
        "sends_first_5s": {how: sum(1 for stamp, h in sends
                                    if h == how and stamp < start_at + 5.0) for how in kinds},
        "trips": len(trips), "trip_ms_p50_p99_max": [pct(0.5), pct(0.99), pct(1.0)],
        "trip_outcomes": {o: sum(1 for t in trips if t[3] == o)
                          for o in sorted({t[3] for t in trips})},
        "trips_not_served_first_5s": sum(1 for t in trips
                                         if t[3] != "ok" and t[0] < start_at + 5.0),
        "decreases_t_w": [[round(stamp - start_at, 2), round(w, 1)]
                          for stamp, w in decreases][:8],
        "warnings": [[round(stamp - start_at, 3), text] for stamp, text in
                     sorted(w for trace in traces for w in trace["warnings"])][:8],
    }


def _worker(variant: str, url: str, redis_url: Optional[str], prefix: str, start_at: float,
            seconds: float, results: Any, trace: bool = False) -> None:
    tracer = _Trace() if trace else None
    session = _session(variant, redis_url, prefix)
    calls: list[tuple[float, float, bool]] = []  # (wall start, seconds, succeeded)
    lock = threading.Lock()
    stop_at = start_at + seconds

    def run() -> None:
        while time.time() < stop_at:
            started = time.time()
            try:
                ok = session.get(url, timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                calls.append((started, time.time() - started, ok))

    time.sleep(max(0.0, start_at - time.time()))
    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((calls, None if tracer is None else tracer.result()))


def _vendor() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.ratelimited", str(VENDOR_RATE), "-", "0.02"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def fleet_variant(variant: str, seconds: float, redis_url: Optional[str],
                  trace: bool = False) -> dict[str, Any]:
    vendor, port = _vendor()
    url = f"http://127.0.0.1:{port}/api"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 3.0  # every process ready before the first call
    prefix = f"bench-{os.getpid()}-{time.time_ns()}"
    processes = [context.Process(target=_worker, args=(variant, url, redis_url, prefix,
                                                       start_at, seconds, results, trace))
                 for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    stop, decreases = threading.Event(), []  # type: ignore[var-annotated]
    if trace and redis_url is not None and "shared" in variant:
        threading.Thread(target=_watch_decreases, args=(redis_url, prefix, stop, decreases),
                         daemon=True).start()
    calls: list[tuple[float, float, bool]] = []
    traces = []
    for _ in processes:
        done, traced = results.get(timeout=seconds + 120)
        calls.extend(done)
        if traced is not None:
            traces.append(traced)
    for process in processes:
        process.join(timeout=30)
    stop.set()
    vendor.terminate()
    out, _ = vendor.communicate(timeout=30)
    counts = json.loads(out.strip().splitlines()[-1])
    if trace:
        print(json.dumps(_trace_report(variant, traces, counts, start_at, decreases)),
              file=sys.stderr, flush=True)
    return summarize(variant, calls, counts, seconds, start_at)


def summarize(variant: str, calls: list[tuple[float, float, bool]], counts: dict[str, Any],
              seconds: float, start_at: float) -> dict[str, Any]:
    throttled = sum(counts["throttled"].values())
    answers = counts["executed"] + throttled
    good = [c for c in calls if c[2]]
    end_at = start_at + seconds
    # Goodput: what the vendor executed within the run's window (the calls under way at
    # its end finish later and are not counted), steady: after the first 5 s.
    inside = [t for stamp, t in counts["answered"] if start_at <= stamp < end_at]
    later = [t for stamp, t in counts["answered"] if start_at + 5.0 <= stamp < end_at]
    times = sorted(c[1] for c in good)

    def pct(q: float) -> Optional[float]:
        return times[min(len(times) - 1, int(q * len(times)))] if times else None

    return {
        "variant": variant, "calls": len(calls), "succeeded": len(good),
        "failed": len(calls) - len(good), "answers": answers, "throttled": throttled,
        "throttled_share": throttled / answers if answers else 0.0,
        "steady_throttled_share": sum(later) / len(later) if later else 0.0,
        "goodput": inside.count(False) / seconds / VENDOR_RATE,
        "steady_goodput": later.count(False) / max(1e-9, seconds - 5.0) / VENDOR_RATE,
        "p50": pct(0.5), "p99": pct(0.99), "vendor_max_in_window": counts["max_in_window"],
    }


# -- 2. the success-path cost ------------------------------------------------------------------

class _StubbedOurs(SmartRetryAdapter, _StubTransport):
    """Our adapter over a canned transport."""


def success_cost(rounds: int, per_round: int) -> dict[str, list[float]]:
    request = requests.Request("GET", "http://127.0.0.1:9/ok").prepare()
    variants = {
        "no throttle": _StubbedOurs(log=False),
        "Throttle(rate=1e9)": _StubbedOurs(log=False, throttle=Throttle(rate=1e9)),
        "Throttle(max_in_flight=1000)": _StubbedOurs(log=False,
                                                     throttle=Throttle(max_in_flight=1000)),
    }
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for index in range(rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            adapter = variants[name]
            started = time.process_time()
            for _ in range(per_round):
                adapter.send(request, timeout=5.0)
            cpu[name].append((time.process_time() - started) / per_round * 1e6)
    return cpu


# -- 3. Redis round trips per request -------------------------------------------------------------

def _evalsha_calls(redis_url: str) -> int:
    import redis

    stats = redis.Redis.from_url(redis_url).info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha",
                                                                  "cmdstat_eval"))


def round_trips(redis_url: str, seconds: float) -> dict[str, dict[float, float]]:
    from requests_smartretry.redis_state import RedisStateStore

    out: dict[str, dict[float, float]] = {}
    for label, throttle_options in (("rate=1000", {"rate": 1000.0}),
                                    ("rate=1000, max_in_flight=100",
                                     {"rate": 1000.0, "max_in_flight": 100})):
        out[label] = {}
        for per_second in (1.0, 10.0, 100.0):
            store = RedisStateStore(redis_url, prefix=f"rt-{time.time_ns()}")
            adapter = _StubbedOurs(log=False, throttle=Throttle(**throttle_options),
                                   state=store, budget=None)
            request = requests.Request("GET", "http://127.0.0.1:9/ok").prepare()
            adapter.send(request, timeout=5.0)  # connected
            before = _evalsha_calls(redis_url)
            count = max(5, int(per_second * seconds))
            started = time.monotonic()
            for index in range(count):
                time.sleep(max(0.0, started + index / per_second - time.monotonic()))
                adapter.send(request, timeout=5.0)
            out[label][per_second] = (_evalsha_calls(redis_url) - before) / count
            store.close()
    return out


# -- report --------------------------------------------------------------------------------------

def _ms(value: Optional[float]) -> str:
    return "—" if value is None else f"{value * 1000:.0f}"


def report(rows: list[dict[str, Any]], cost: Optional[dict[str, list[float]]],
           trips: Optional[dict[str, dict[float, float]]], seconds: float) -> str:
    out = [f"## 7. Throttling: a fleet against a vendor at {VENDOR_RATE} requests/s "
           f"({PROCESSES} processes × {THREADS} threads, {seconds:g} s per variant)\n",
           "Command: `python benchmarks/throttle.py --seconds "
           f"{seconds:g}`.  The vendor (`tests/fakes/ratelimited.py`, 20 ms per request) "
           "executes at most 20 requests in any 1 s window and answers 429 beyond.  "
           "Throttled share: the vendor's throttling answers ÷ all its answers.  Goodput: "
           "successful calls/s ÷ 20.  Steady: the same after the first 5 s of the run.\n",
           "| variant | calls | failed | throttled share | steady | goodput | steady | "
           "p50 ms | p99 ms | vendor max/1 s |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        out.append(f"| {row['variant']} | {row['calls']} | {row['failed']} | "
                   f"{row['throttled_share']:.1%} ({row['throttled']}) | "
                   f"{row['steady_throttled_share']:.1%} | {row['goodput']:.2f} | "
                   f"{row['steady_goodput']:.2f} | {_ms(row['p50'])} | {_ms(row['p99'])} | "
                   f"{row['vendor_max_in_window']} |")
    if cost is not None:
        out += _cost_report(cost)
    if trips is not None:
        out += ["", "### 7c. Redis round trips per request, shared throttle, one process\n",
                "| throttle | 1 req/s | 10 req/s | 100 req/s |", "| --- | ---: | ---: | ---: |"]
        for label, values in trips.items():
            out.append(f"| {label} | " + " | ".join(f"{values[r]:.2f}" for r in (1.0, 10.0, 100.0))
                       + " |")
    return "\n".join(out) + "\n"


def _cost_report(cost: dict[str, list[float]]) -> list[str]:
    base = statistics.median(cost["no throttle"])
    out = ["", "### 7b. Success-path cost of a local throttle (CPU µs per `adapter.send`, "
           "canned transport, interleaved rounds)\n",
           "| variant | median µs | added µs (median of per-round differences) |",
           "| --- | ---: | ---: |"]
    for name, values in cost.items():
        added = statistics.median(v - b for v, b in zip(values, cost["no throttle"]))
        out.append(f"| {name} | {statistics.median(values):.2f} | "
                   f"{'—' if name == 'no throttle' else f'{added:+.2f}'} |")
    out.append(f"\n(no throttle: {base:.2f} µs per request in the same run)")
    return out


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [row["variant"].replace("ours, ", "").replace(" (", "\n(") for row in rows]
    left.bar(names, [row["throttled_share"] * 100 for row in rows], color="#c44")
    left.axhline(2.0, color="k", linestyle="--", linewidth=1)
    left.set_ylabel("throttled answers, % of the vendor's answers")
    right.bar(names, [row["goodput"] * 100 for row in rows], color="#48a")
    right.axhline(90.0, color="k", linestyle="--", linewidth=1)
    right.set_ylabel("goodput, % of the vendor's limit")
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{PROCESSES} processes × {THREADS} threads against a vendor at "
                 f"{VENDOR_RATE} requests/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--variants", default=";".join(VARIANTS),
                        help="variant names separated by ';'")
    parser.add_argument("--sections", default="fleet,cost,trips",
                        help="which sections to run, separated by ',' (fleet, cost, trips; "
                             "default: all three)")
    parser.add_argument("--plot", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--trace", action="store_true",
                        help="fleet: report on stderr how each turn went (booked in Redis, "
                             "leased, paced locally, not asked), the round trips' times "
                             "and the WARNINGs of the workers")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    unknown = sections - {"fleet", "cost", "trips"}
    if unknown:
        parser.error(f"--sections: unknown section(s) {', '.join(sorted(unknown))}")
    from tests.redis_server import RedisServer

    rows = []
    trips = None
    with RedisServer() as redis_server:
        if "fleet" in sections:
            for variant in args.variants.split(";"):
                rows.append(fleet_variant(variant, args.seconds, redis_server.url,
                                          args.trace))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if "trips" in sections:
            trips = round_trips(redis_server.url, seconds=10.0)
    cost = success_cost(rounds=60, per_round=2000) if "cost" in sections else None
    print(report(rows, cost, trips, args.seconds))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "cost_us": cost,
                                               "round_trips": trips}, indent=1))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
