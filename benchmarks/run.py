"""Benchmarks: requests-smartretry side by side with plain requests and its retry peers.

    pip install -e ".[bench]"            # matplotlib, tenacity, backoff, stamina
    python benchmarks/run.py             # full run (a few minutes): report, JSON and PNGs in
                                         # $TMPDIR/requests-smartretry-bench (or --out DIR)
    python benchmarks/run.py --quick     # smoke run (about a minute), same outputs
    python benchmarks/run.py --write     # regenerate the tracked BENCHMARKS.md,
                                         # benchmarks/results.json and benchmarks/*.png

The server (``benchmarks/server.py``) runs in a SEPARATE process and is far cheaper per
request than any ``requests`` client, so the client is what is measured.  Every figure comes
from interleaved rounds (each round runs every library once, in a rotated order), so slow
phases of a shared machine hit every library alike.  We report the median over rounds, the
ratio to plain ``HTTPAdapter`` (median of the per-round paired ratios), and the min–max
over rounds as the noise of each figure.  Client CPU time (``time.process_time``, every
thread of the client process) is reported next to wall time.

Scenarios: (1) success-path overhead, (2) 10 MB body throughput, (3) deadline precision
against a slow drip, (4) outage amplification (server-side attempts per call; retry budget;
breaker-open rejection cost), (5) 1/4/16 threads sharing one session, (6) the Redis state
store (``benchmarks/bench_redis_state.py``, run when present; it receives ``BENCH_QUICK=1``
in quick mode and its standard output, markdown, is included as is).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import logging
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # benchmark the checkout, not an installed copy

import backoff  # noqa: E402
import requests  # noqa: E402
import stamina  # noqa: E402
import tenacity  # noqa: E402
import urllib3  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402
from urllib3.util.retry import Retry  # noqa: E402

import requests_smartretry  # noqa: E402
from requests_smartretry import (  # noqa: E402
    CircuitBreaker,
    CircuitOpenError,
    RetryBudget,
    SmartRetryAdapter,
)

TIMEOUT = 5.0  # every client passes the same timeout
ATTEMPTS = 3  # every retrying client: at most 3 attempts (2 retries)
RETRY_STATUSES = (429, 500, 502, 503, 504)
POOL = 16  # connections per pool, enough for the 16-thread scenario

Get = Callable[[str], Any]
RETRIED_OURS = "ours, RetryBudget(ratio=1.0)"


# -- the server process -------------------------------------------------------------------

class Server:
    """``benchmarks/server.py`` in a child process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "server.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self._control = requests.Session()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> int:
        return int(self._control.get(self.url(f"/__hits?path={path}"), timeout=5).text)

    def clear(self) -> None:
        self._control.get(self.url("/__clear"), timeout=5)

    def stop(self) -> None:
        self._control.close()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def server_process() -> Iterator[Server]:
    server = Server()
    try:
        yield server
    finally:
        server.stop()


# -- the clients --------------------------------------------------------------------------

def _session(adapter: HTTPAdapter) -> requests.Session:
    session = requests.Session()
    session.mount("http://", adapter)
    return session


def _raise_for_retryable(response: requests.Response) -> requests.Response:
    # The wrapping peers retry on exceptions only: a retryable status must become one.
    if response.status_code in RETRY_STATUSES:
        raise requests.HTTPError(f"{response.status_code}", response=response)
    return response


@dataclass
class Client:
    """One library's way of doing ``GET url`` with retries, on its own session."""

    name: str
    get: Get
    session: requests.Session
    adapter: Optional[HTTPAdapter] = None

    def close(self) -> None:
        self.session.close()


#: Named configurations of ours: the keywords each adds (``benchmarks/callgrind.py``
#: measures them too).
OURS_VARIANTS: dict[str, Callable[[], dict[str, Any]]] = {
    "ours, stats/budget/log off": lambda: {"stats": False, "budget": None, "log": False},
    # For calls that all retry: the default RetryBudget (0.1 token per call) would run dry
    # and stop retrying; ratio 1.0 keeps the budget's work in, in steady state.
    RETRIED_OURS: lambda: {"budget": RetryBudget(ratio=1.0)},
    # Section 4: ours without its budget (the peers' retry rule), and with the default one.
    "ours, budget=None": lambda: {"budget": None},
    "ours (default RetryBudget)": lambda: {},
}


#: Ours called as most people call requests, ``get(url, timeout=...)``: the per-call
#: timeout is resolved on every request (the other "ours" clients call ``get(url)`` and
#: use the adapter's).
PER_CALL_TIMEOUT = ", timeout= per call"
#: The suffix of ours as of another revision (``--against``: ``benchmarks/baseline.py``).
BEFORE = " (before)"


def _before_package() -> Any:
    """The package copy ``--against`` named (``BENCH_AGAINST``), imported."""
    folder = os.environ.get("BENCH_AGAINST")
    if not folder:
        raise ValueError("a client '... (before)' needs --against (BENCH_AGAINST)")
    if folder not in sys.path:
        sys.path.append(folder)
    import importlib

    return importlib.import_module("requests_smartretry_before")


def make_client(name: str, wait: float = 0.001, **ours: Any) -> Client:
    """A client for library ``name`` (or a named variant of ours); ``wait`` is the first
    backoff delay in seconds."""
    if name.startswith("ours") and (BEFORE in name or PER_CALL_TIMEOUT in name):
        before = BEFORE in name
        base = name.replace(BEFORE, "").replace(PER_CALL_TIMEOUT, "")
        package = _before_package() if before else requests_smartretry
        options = dict(OURS_VARIANTS[base]()) if base in OURS_VARIANTS else {}
        if before and "budget" in options and options["budget"] is not None:
            options["budget"] = package.RetryBudget(ratio=options["budget"].settings.ratio)
        client = _ours(package, wait, {**options, **ours})
        if PER_CALL_TIMEOUT in name:
            session = client.session
            client.get = lambda url: session.get(url, timeout=TIMEOUT)
        client.name = name
        return client
    if name in OURS_VARIANTS:
        client = make_client("ours", wait, **{**OURS_VARIANTS[name](), **ours})
        client.name = name
        return client
    if name == "plain":
        session = _session(HTTPAdapter(pool_maxsize=POOL))
        return Client(name, lambda url: session.get(url, timeout=TIMEOUT), session)
    if name == "urllib3 Retry":
        retry = Retry(total=ATTEMPTS - 1, backoff_factor=wait, status_forcelist=RETRY_STATUSES,
                      raise_on_status=False)
        session = _session(HTTPAdapter(max_retries=retry, pool_maxsize=POOL))
        return Client(name, lambda url: session.get(url, timeout=TIMEOUT), session)
    session = _session(HTTPAdapter(pool_maxsize=POOL))

    def plain_get(url: str) -> requests.Response:
        return _raise_for_retryable(session.get(url, timeout=TIMEOUT))

    if name == "tenacity":
        get: Get = tenacity.retry(
            stop=tenacity.stop_after_attempt(ATTEMPTS),
            wait=tenacity.wait_exponential(multiplier=wait, max=wait * 4),
            retry=tenacity.retry_if_exception_type(requests.RequestException), reraise=True,
        )(plain_get)
    elif name == "backoff":
        get = backoff.on_exception(backoff.expo, requests.RequestException, max_tries=ATTEMPTS,
                                   factor=wait, jitter=None)(plain_get)
    elif name == "stamina":
        get = stamina.retry(on=requests.RequestException, attempts=ATTEMPTS, timeout=None,
                            wait_initial=wait, wait_max=wait * 4, wait_jitter=0)(plain_get)
    elif name == "ours":
        session.close()
        return _ours(requests_smartretry, wait, ours)
    else:
        raise ValueError(f"unknown client {name!r}")
    return Client(name, get, session)


def _ours(package: Any, wait: float, options: dict[str, Any]) -> Client:
    """Ours (``package``: this checkout's, or the ``--against`` copy), called ``get(url)``."""
    adapter = package.SmartRetryAdapter(max_retries=ATTEMPTS - 1, timeout=TIMEOUT,
                                        backoff_base=wait, pool_maxsize=POOL, **options)
    session = _session(adapter)
    return Client("ours", session.get, session, adapter)


LIBRARIES = ("plain", "urllib3 Retry", "tenacity", "backoff", "stamina", "ours")
#: §1 also measures ours with its default collaborators off, to show what they cost.
OVERHEAD = (*LIBRARIES, "ours" + PER_CALL_TIMEOUT, "ours, stats/budget/log off")
#: The retried call (§1b): every library that retries a 503.
RETRYING = ("urllib3 Retry", "tenacity", "backoff", "stamina", RETRIED_OURS)


def with_before(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names``, and with ``--against`` each of ours again as of that revision."""
    if not os.environ.get("BENCH_AGAINST"):
        return names
    return names + tuple(f"{n}{BEFORE}" for n in names if n.startswith("ours"))


def rotated(names: tuple[str, ...], round_index: int) -> list[str]:
    shift = round_index % len(names)
    return list(names[shift:] + names[:shift])


# -- statistics ----------------------------------------------------------------------------

def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """``median (min–max)``."""
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def ratio_cell(values: list[float]) -> str:
    return f"{med(values):.3f}× ({min(values):.3f}–{max(values):.3f})"


def ratio_cell_iqr(values: list[float]) -> str:
    """``median× (IQR q1–q3; min–max)``: with hundreds of short rounds the quartiles say
    how well the median is pinned down, the extremes only what one batch can do."""
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (f"{med(values):.3f}× (IQR {q1:.3f}–{q3:.3f}; "
            f"{min(values):.2f}–{max(values):.2f})")


# -- scenario 1: success-path overhead ---------------------------------------------------

def interleaved_rounds(clients: dict[str, Client], url: str, rounds: int,
                       per_round: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of each library's ``per_round`` GETs, round after round in a
    rotated order; closes the clients at the end."""
    seconds: dict[str, list[tuple[float, float]]] = {n: [] for n in clients}
    for index in range(rounds):
        for name in rotated(tuple(clients), index):
            get = clients[name].get
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(per_round):
                get(url)
            seconds[name].append((time.perf_counter() - w0, time.process_time() - c0))
    for client in clients.values():
        client.close()
    return seconds


def bench_overhead(server: Server, rounds: int, per_round: int,
                   names: Optional[tuple[str, ...]] = None,
                   make: Callable[[str], Client] = make_client,
                   base: str = "plain") -> dict[str, Any]:
    """Success-path cost of each client ``names`` (built by ``make``; default
    :data:`OVERHEAD`), and its ratio to ``base``'s (other benchmarks reuse it with their
    own clients)."""
    if names is None:
        names = with_before(OVERHEAD)
    clients = {name: make(name) for name in names}
    url = server.url("/ok")
    for client in clients.values():  # warm: connections, imports, caches
        for _ in range(50):
            client.get(url)
    seconds = interleaved_rounds(clients, url, rounds, per_round)
    return _paired(seconds, per_round, rounds, base)


def _paired(seconds: dict[str, list[tuple[float, float]]], per_round: int, rounds: int,
            base: str) -> dict[str, Any]:
    """µs per call (wall, CPU) and the per-round ratios to ``base``."""
    names = tuple(seconds)
    wall = {n: [w / per_round * 1e6 for w, _ in seconds[n]] for n in names}
    cpu = {n: [c / per_round * 1e6 for _, c in seconds[n]] for n in names}
    return {
        "per_round": per_round,
        "rounds": rounds,
        "base": base,
        "wall_us": wall,
        "cpu_us": cpu,
        "wall_ratio": {n: [a / b for a, b in zip(wall[n], wall[base])] for n in names},
        "cpu_ratio": {n: [a / b for a, b in zip(cpu[n], cpu[base])] for n in names},
    }


# -- scenario 1b: a retried call ----------------------------------------------------------

FLAKY = "/flaky"  # the server answers 503 and 200 in turn: each call is 503, retry, 200


def bench_retried(server: Server, rounds: int, per_round: int) -> dict[str, Any]:
    """CPU per call whose first attempt gets 503 and whose retry (backoff 0) gets 200."""
    clients = {name: make_client(name, wait=0.0) for name in with_before(RETRYING)}
    url = server.url(FLAKY)
    for name, client in clients.items():  # warm, and check that every call retries once
        server.clear()
        for _ in range(20):
            assert client.get(url).status_code == 200
        hits = server.hits(FLAKY)
        assert hits == 40, f"{name}: {hits} attempts for 20 calls (expected 40)"
    seconds = interleaved_rounds(clients, url, rounds, per_round)
    return _paired(seconds, per_round, rounds, "urllib3 Retry")


# -- scenario 2: large body throughput -----------------------------------------------------

BIG = 10_000_000


def bench_throughput(server: Server, rounds: int, per_round: int) -> dict[str, Any]:
    clients = {name: make_client(name) for name in LIBRARIES}
    url = server.url(f"/big?bytes={BIG}")
    for client in clients.values():
        assert len(client.get(url).content) == BIG
    seconds = interleaved_rounds(clients, url, rounds, per_round)
    mbps = {n: [BIG * per_round / w / 1e6 for w, _ in seconds[n]] for n in LIBRARIES}
    cpu_ms = {n: [c / per_round * 1e3 for _, c in seconds[n]] for n in LIBRARIES}
    return {
        "rounds": rounds,
        "per_round": per_round,
        "mbps": mbps,
        "cpu_ms": cpu_ms,
        "ratio": {n: [a / b for a, b in zip(mbps[n], mbps["plain"])] for n in LIBRARIES},
    }


# -- scenario 3: deadline precision --------------------------------------------------------

DRIP_TIMEOUT = 1.0
DRIP_PATH = "/drip?interval=0.05&count=100"  # one byte every 50 ms: 5 s in all


def bench_deadline(server: Server, ours_runs: int, peer_rounds: int) -> dict[str, Any]:
    url = server.url(DRIP_PATH)
    overshoot_ms: list[float] = []
    ours = SmartRetryAdapter(max_retries=0, timeout=DRIP_TIMEOUT)
    session = _session(ours)
    for _ in range(ours_runs):
        started = time.perf_counter()
        try:
            session.get(url)
            raise AssertionError("ours was expected to cut the drip")
        except requests.Timeout:
            overshoot_ms.append((time.perf_counter() - started - DRIP_TIMEOUT) * 1e3)
    session.close()

    # The peers cannot cut it: each waits the whole drip.  They run concurrently (their time
    # is the server's dripping, not client work) so that the scenario stays short.
    peers = [n for n in LIBRARIES if n != "ours"]
    elapsed: dict[str, list[float]] = {n: [] for n in peers}
    for _ in range(peer_rounds):
        def one(name: str) -> None:
            client = make_client(name)
            started = time.perf_counter()
            try:
                client.session.get(url, timeout=DRIP_TIMEOUT)
            finally:
                elapsed[name].append(time.perf_counter() - started)
                client.close()

        threads = [threading.Thread(target=one, args=(n,)) for n in peers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return {"timeout": DRIP_TIMEOUT, "drip": DRIP_PATH, "overshoot_ms": overshoot_ms,
            "peers_elapsed_s": elapsed}


# -- scenario 4: outage, storm, brownout: what retrying costs the server ---------------------

#: Failure shapes of section 4, as (route, query for call i): every attempt 503 (outage);
#: 2 of 3 calls fail once and succeed on retry (storm); each attempt 503 with chance 0.5
#: (brownout).  The server counts the attempts of each route.
FAILURES: dict[str, tuple[str, Callable[[int], str]]] = {
    "outage": ("/status/503", lambda i: ""),
    "storm": ("/storm", lambda i: f"?key={i}&fail={int(i % 3 != 2)}"),
    "brownout": ("/brownout", lambda i: ""),
}


def _run_calls(server: Server, client: Client, calls: int, failure: str,
               threads: int = 1) -> tuple[float, int]:
    """(server-side attempts per call, calls that did not end 200) for ``calls`` calls
    spread over ``threads`` threads sharing the client."""
    server.clear()
    route, query = FAILURES[failure]
    failed = 0
    lock = threading.Lock()

    def run(indices: range) -> None:
        nonlocal failed
        for i in indices:
            try:
                ok = client.get(server.url(route + query(i))).status_code == 200
            except requests.RequestException:
                ok = False
            if not ok:
                with lock:
                    failed += 1

    workers = [threading.Thread(target=run, args=(range(t, calls, threads),))
               for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return server.hits(route) / calls, failed


#: Section 4's clients: every library, ours without its budget (the peers' retry rule) and
#: ours with the default RetryBudget().
BUDGET_LABELS = ("ours, budget=None", "ours (default RetryBudget)")


def bench_outage(server: Server, calls: int, rejection_rounds: int) -> dict[str, Any]:
    result: dict[str, Any] = {"calls": calls, "attempts_per_call": {}, "notes": [],
                              "failures": {}}
    labels = [n for n in LIBRARIES if n != "ours"] + list(BUDGET_LABELS)
    for label in labels:
        row: dict[str, Any] = {}
        for failure, threads in (("outage", 1), ("storm", 1), ("storm", 16),
                                 ("brownout", 1)):
            client = make_client(label)  # fresh (with a fresh budget) for each scenario
            per_call, failed = _run_calls(server, client, calls, failure, threads)
            client.close()
            column = failure if threads == 1 else f"{failure}, {threads} threads"
            row[column] = {"attempts_per_call": per_call, "failed": failed}
        result["failures"][label] = row
        result["attempts_per_call"][label] = row["outage"]["attempts_per_call"]
    client = make_client("ours", breaker=CircuitBreaker(failure_threshold=5,
                                                        recovery_timeout=3600.0))
    result["attempts_per_call"]["ours + CircuitBreaker(5)"] = _run_calls(
        server, client, calls, "outage")[0]
    # The breaker is open now: every call is refused before touching the network.
    url = server.url(FAILURES["outage"][0])
    per_call_us: list[float] = []
    cpu_us: list[float] = []
    for _ in range(rejection_rounds):
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(1000):
            try:
                client.get(url)
            except CircuitOpenError:
                pass
        per_call_us.append((time.perf_counter() - w0) / 1000 * 1e6)
        cpu_us.append((time.process_time() - c0) / 1000 * 1e6)
    client.close()
    result["rejection_us"] = per_call_us
    result["rejection_cpu_us"] = cpu_us
    return result


# -- scenario 5: threads sharing one session -------------------------------------------------

def bench_threads(server: Server, counts: tuple[int, ...], rounds: int,
                  requests_per_round: int) -> dict[str, Any]:
    """Throughput and CPU per request of ``count`` threads sharing one client, for each
    of ``counts``; ours' ratios to plain per round (``ratio``: throughput, ``cpu_ratio``:
    CPU per request, whose 1-thread value the others should stay near)."""
    url = server.url("/ok")
    names = with_before(("plain", "ours"))
    result: dict[str, Any] = {"rounds": rounds, "requests_per_round": requests_per_round,
                              "by_threads": {}}
    for count in counts:
        clients = {n: make_client(n) for n in names}
        per_thread = max(1, requests_per_round // count)
        throughput: dict[str, list[float]] = {n: [] for n in names}
        cpu_us: dict[str, list[float]] = {n: [] for n in names}

        def run(get: Get, times: int = per_thread) -> None:
            for _ in range(times):
                get(url)

        for index in range(rounds + 1):  # round 0 warms the pools up to `count` connections
            for name in rotated(names, index):
                threads = [threading.Thread(target=run, args=(clients[name].get,))
                           for _ in range(count)]
                started, cpu = time.perf_counter(), time.process_time()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                if index:
                    throughput[name].append(per_thread * count /
                                            (time.perf_counter() - started))
                    cpu_us[name].append((time.process_time() - cpu) / (per_thread * count)
                                        * 1e6)
        for client in clients.values():
            client.close()
        result["by_threads"][str(count)] = {
            "req_per_s": throughput,
            "cpu_us": cpu_us,
            "ratio": [a / b for a, b in zip(throughput["ours"], throughput["plain"])],
            "ratios": {n: [a / b for a, b in zip(throughput[n], throughput["plain"])]
                       for n in names if n != "plain"},
            "cpu_ratio": {n: [a / b for a, b in zip(cpu_us[n], cpu_us["plain"])]
                          for n in names if n != "plain"},
        }
    return result


# -- profile: where our success path spends its time ----------------------------------------

def profile_ours(server: Server, calls: int) -> str:
    client = make_client("ours")
    url = server.url("/ok")
    for _ in range(100):
        client.get(url)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        client.get(url)
    profiler.disable()
    client.close()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    ours = sum(row[2] for key, row in stats.stats.items()  # type: ignore[attr-defined]
               if "requests_smartretry" in key[0])
    stats.sort_stats("tottime").print_stats(r"requests_smartretry", 10)
    lines = [line.replace(str(ROOT) + os.sep, "") for line in stream.getvalue().splitlines()
             if ("requests_smartretry" in line or "ncalls" in line) and "List reduced" not in line]
    head = (f"cProfile, {calls} successful GETs through SmartRetryAdapter: "
            f"{ours / total:.1%} of the client's profiled time is in requests_smartretry's "
            f"own functions (self time); the rest is requests/urllib3/http.client/sockets.\n")
    return head + "\n".join(lines)


# -- where the time goes, without the network ---------------------------------------------

class _StubTransport(HTTPAdapter):
    """``HTTPAdapter`` whose transport is a canned 200: isolates the adapters' own work."""

    def send(self, request: requests.PreparedRequest, stream: bool = False,  # type: ignore[override]
             timeout: Any = None, verify: Any = True, cert: Any = None,
             proxies: Any = None) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response._content = b"ok"
        response.request = request
        response.url = request.url or ""
        response.raw = io.BytesIO(b"ok")
        return response


class _StubbedOurs(SmartRetryAdapter, _StubTransport):
    """Our adapter over the canned transport (its ``super().send`` is the stub's)."""


def bench_pure_overhead(rounds: int, per_round: int) -> dict[str, Any]:
    """CPU µs per ``adapter.send`` with a canned transport: what our layer itself costs."""
    request = requests.Request("GET", "http://127.0.0.1:9/ok").prepare()
    variants: dict[str, tuple[HTTPAdapter, Any]] = {
        "HTTPAdapter.send (stub transport)": (_StubTransport(), TIMEOUT),
        "ours, defaults": (_StubbedOurs(max_retries=2, timeout=TIMEOUT), TIMEOUT),
        "ours, log=False": (_StubbedOurs(max_retries=2, timeout=TIMEOUT, log=False), TIMEOUT),
        "ours, log=False, no deadline watch": (
            _StubbedOurs(max_retries=2, timeout=TIMEOUT, log=False), (TIMEOUT, None)),
    }
    names = tuple(variants)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for index in range(rounds):
        for name in rotated(names, index):
            adapter, timeout = variants[name]
            started = time.process_time()
            for _ in range(per_round):
                adapter.send(request, timeout=timeout)
            cpu[name].append((time.process_time() - started) / per_round * 1e6)
    return {"rounds": rounds, "per_round": per_round, "cpu_us": cpu}


# -- scenario 6: Redis ------------------------------------------------------------------------

def bench_redis(quick: bool) -> Optional[str]:
    script = HERE / "bench_redis_state.py"
    if not script.exists():
        return None
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if quick:
        env["BENCH_QUICK"] = "1"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)
    if done.returncode != 0:
        return f"`bench_redis_state.py` failed (exit {done.returncode}):\n\n```\n" \
               f"{done.stderr[-2000:]}\n```"
    return done.stdout.strip()


def bench_throttle(quick: bool) -> Optional[str]:
    """Section 7: ``benchmarks/throttle.py`` (its markdown; 15 s per fleet variant with
    ``--quick``, 60 s otherwise) and its plot."""
    script = HERE / "throttle.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    seconds = "15" if quick else "60"
    done = subprocess.run([sys.executable, str(script), "--seconds", seconds, "--plot",
                           str(HERE / "bench_throttle.png")], capture_output=True, text=True,
                          env=env, timeout=1800, cwd=ROOT)
    if done.returncode != 0:
        return f"`throttle.py` failed (exit {done.returncode}):\n\n```\n" \
               f"{done.stderr[-2000:]}\n```"
    return done.stdout.strip()


# -- report ---------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    import matplotlib

    def git_head() -> str:
        try:
            return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                  capture_output=True, text=True, timeout=5).stdout.strip()
        except OSError:
            return "?"

    return {
        "python": platform.python_version(),
        "requests-smartretry": f"{requests_smartretry.__version__} (git {git_head()})",
        "requests": requests.__version__,
        "urllib3": urllib3.__version__,
        "tenacity": _dist_version("tenacity"),
        "backoff": _dist_version("backoff"),
        "stamina": _dist_version("stamina"),
        "matplotlib": matplotlib.__version__,
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"os": platform.platform(), "cpu": cpu, "cpus": str(os.cpu_count())}


def _paired_table(block: dict[str, Any], base: str, unit: str = "request") -> str:
    rows = [f"| library | wall µs/{unit} | wall ×{base} | CPU µs/{unit} | CPU ×{base} |",
            "| --- | --- | --- | --- | --- |"]
    for name in block["wall_us"]:
        rows.append(f"| {name} | {spread(block['wall_us'][name])} | "
                    f"{ratio_cell_iqr(block['wall_ratio'][name])} | "
                    f"{spread(block['cpu_us'][name])} | "
                    f"{ratio_cell_iqr(block['cpu_ratio'][name])} |")
    return "\n".join(rows)


def overhead_verdict(o: dict[str, Any]) -> str:
    """§1's goal, checked on the medians of the paired CPU ratios."""
    cpu = {n: med(v) for n, v in o["cpu_ratio"].items()}
    ours = cpu["ours"]
    peers = [n for n in ("tenacity", "stamina") if n in cpu]
    below = all(ours < cpu[n] for n in peers)
    return (f"Measured: ours {ours:.3f}× plain CPU (goal ≤ 1.03×: "
            f"{'met' if ours <= 1.03 else 'NOT met'}); "
            + ", ".join(f"{n} {cpu[n]:.3f}×" for n in peers)
            + f" (ours {'below' if below else 'NOT below'} them); wall "
            f"{med(o['wall_ratio']['ours']):.3f}×.  Extra cost per request: "
            f"{med(o['cpu_us']['ours']) - med(o['cpu_us']['plain']):.0f} µs CPU, "
            f"{med(o['wall_us']['ours']) - med(o['wall_us']['plain']):.0f} µs wall.")


def retried_verdict(r: dict[str, Any]) -> str:
    ours = med(r["cpu_ratio"][RETRIED_OURS])
    return (f"Measured: ours {ours:.3f}× urllib3 Retry CPU per retried call (goal ≤ 1.15×: "
            f"{'met' if ours <= 1.15 else 'NOT met'}).")


def threads_verdict(th: dict[str, Any]) -> str:
    ratios = {count: med(row["ratio"]) for count, row in th["by_threads"].items()}
    met = all(v >= 0.98 for v in ratios.values())
    verdict = ("Goal: ours ≥ 0.98× plain throughput at every thread count.  Measured: "
               + ", ".join(f"{c} threads {v:.3f}×" for c, v in ratios.items())
               + f" ({'met' if met else 'NOT met'}).")
    cpu = {count: med(row["cpu_ratio"]["ours"]) for count, row in th["by_threads"].items()
           if "cpu_ratio" in row}
    if len(cpu) > 1:
        first = next(iter(cpu.values()))
        spread_ = max(abs(v - first) for v in cpu.values())
        verdict += ("  CPU per request ÷ plain: "
                    + ", ".join(f"{c} threads {v:.3f}×" for c, v in cpu.items())
                    + f" (within {spread_:.3f} of 1 thread; goal 0.01: "
                    f"{'met' if spread_ <= 0.01 else 'NOT met'}).")
    return verdict


def write_report(results: dict[str, Any], path: Path, plots: Path = HERE) -> None:
    meta = results["meta"]

    def image(name: str) -> str:  # the plot's link, relative to the report
        return Path(os.path.relpath(plots / name, path.resolve().parent)).as_posix()

    out: list[str] = []
    w = out.append
    w("# Benchmarks\n")
    w(f"Generated by `{meta['command']}` on {meta['date']} ({meta['duration_s']:.0f} s).")
    w("Regenerate with `python benchmarks/run.py --write` (full) or `--quick --write`; the raw "
      "numbers are in `benchmarks/results.json`.\n")
    w("**Machine**: " + ", ".join(f"{k} {v}" for k, v in meta["machine"].items())
      + f"; {meta.get('environment_variables', '?')} environment variables (requests reads "
      "them all on every request: more of them make every client slower, plain too)"
      + f"; load average {meta['load_before']} before, {meta['load_after']} after "
      "(a shared machine: read the min–max columns).  ")
    w("**Versions**: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".\n")
    w("**Method**: the server is a separate process (`benchmarks/server.py`, raw sockets, "
      "prebuilt responses), so the client is the bottleneck.  Each round runs every library "
      "once, in a rotated order (A B C…, B C… A); figures are medians over rounds, with the "
      "min–max over rounds in brackets as the noise (§1 adds the interquartile range of its "
      "paired ratios).  Ratios to plain are the median of the per-round paired ratios.  "
      "CPU is `time.process_time()` of the client process (all its threads, our watchdog "
      "included) per request.  Every retrying client allows 3 attempts; "
      "the peers wrap `session.get` and raise on 429/5xx so that they retry statuses too.\n")

    o = results["overhead"]
    w(f"## 1. Success-path overhead (GET /ok, 2-byte body, {o['rounds']} rounds × "
      f"{o['per_round']} requests)\n")
    w("Goal: ours (every default on) ≤ 1.03× plain in client CPU, and below tenacity and "
      "stamina in the same run.  urllib3's `Retry` costs what plain costs on success: it "
      "is the floor, not a peer.\n")
    w(_paired_table(o, "plain"))
    w("")
    w(overhead_verdict(o) + "\n")
    w(f"![success-path overhead]({image('bench_overhead.png')})\n")
    if "profile" in results:
        w("Where our time goes on the success path:\n")
        w("```\n" + results["profile"] + "\n```\n")

    if "retried" in results:
        r = results["retried"]
        w(f"## 1b. A retried call: 503, then 200 on the retry, backoff 0 ({r['rounds']} "
          f"rounds × {r['per_round']} calls)\n")
        w("Goal: ours ≤ 1.15× urllib3's `Retry` in client CPU per call.  Every call "
          "retries, so ours runs with `RetryBudget(ratio=1.0)` (the default 0.1 would run "
          "dry and stop retrying); stats and log lines stay on, and the retry's log lines "
          "are built (a `NullHandler`), as in production.\n")
        w(_paired_table(r, "urllib3 Retry", "call"))
        w("")
        w(retried_verdict(r) + "\n")

    if "pure" in results:
        p = results["pure"]
        base = min(p["cpu_us"]["HTTPAdapter.send (stub transport)"])
        w(f"The same path without the network (`adapter.send` over a canned transport, "
          f"{p['rounds']} rounds × {p['per_round']} calls; the minimum over rounds is the "
          "least noisy estimate of pure CPU cost on a shared machine):\n")
        w("| variant | CPU µs per send, min | median (min–max) | added to HTTPAdapter.send, min |")
        w("| --- | --- | --- | --- |")
        for name, values in p["cpu_us"].items():
            w(f"| {name} | {min(values):.1f} | {spread(values, '{:.1f}')} | "
              f"{min(values) - base:+.1f} |")
        w("")

    t = results["throughput"]
    w(f"## 2. Large body: 10 MB GET, body read in the attempt ({t['rounds']} rounds × "
      f"{t['per_round']} downloads)\n")
    w("Goal: ours ≥ 0.95× plain (our deadline covers the body read).\n")
    w("| library | MB/s | ×plain | CPU ms per 10 MB |")
    w("| --- | --- | --- | --- |")
    for name in LIBRARIES:
        w(f"| {name} | {spread(t['mbps'][name])} | {ratio_cell(t['ratio'][name])} | "
          f"{spread(t['cpu_ms'][name], '{:.1f}')} |")
    tr = med(t["ratio"]["ours"])
    w(f"\nMeasured: ours {tr:.3f}× plain (goal ≥ 0.95×: {'met' if tr >= 0.95 else 'NOT met'})."
      "\n")
    w(f"![10 MB throughput]({image('bench_throughput.png')})\n")

    d = results["deadline"]
    w(f"## 3. Deadline precision: slow drip (`{d['drip']}`, 5 s in all), timeout "
      f"{d['timeout']:g} s\n")
    over = d["overshoot_ms"]
    w(f"Ours cuts the attempt at its wall-clock deadline: overshoot past {d['timeout']:g} s "
      f"median **{med(over):.1f} ms**, max **{max(over):.1f} ms** (min {min(over):.1f} ms, "
      f"{len(over)} runs).  The peers pass `timeout={d['timeout']:g}` too, but requests' "
      "timeout is per socket read and every byte arrives within it, so none of them cuts "
      "the drip:\n")
    w("| library | elapsed with timeout=1 s |")
    w("| --- | --- |")
    w(f"| ours | {spread([d['timeout'] + x / 1e3 for x in over], '{:.3f}')} s |")
    for name, values in d["peers_elapsed_s"].items():
        w(f"| {name} | {spread(values, '{:.2f}')} s |")
    w(f"\n![deadline precision]({image('bench_deadline.png')})\n")

    a = results["outage"]
    w(f"## 4. Outage amplification: every request gets 503 ({a['calls']} calls per "
      "library)\n")
    w("Server-side attempts per call (counted by the server; exact counts, no timing "
      "noise).  Every retrying client is configured for 3 attempts.\n")
    w("| client | attempts per call |")
    w("| --- | --- |")
    for name, value in a["attempts_per_call"].items():
        w(f"| {name} | {value:.2f} |")
    w("")
    if a.get("failures"):
        columns = list(next(iter(a["failures"].values())))
        w(f"Beside the outage: a **storm** of transient failures (2 of 3 calls get one 503, "
          f"then 200 on retry), sequential and from 16 threads sharing the client, and a "
          f"**brownout** (each attempt 503 with probability 0.5, one seeded sequence). "
          f"Cells: server attempts per call (calls that did not end 200, of "
          f"{a['calls']}). The budget refunds a retry that succeeds, so the storm costs it "
          f"nothing; in the brownout it trades lost calls for load.\n")
        w("| client | " + " | ".join(columns) + " |")
        w("| --- |" + " --- |" * len(columns))
        for name, row in a["failures"].items():
            w(f"| {name} | " + " | ".join(
                f"{row[c]['attempts_per_call']:.2f} ({row[c]['failed']})" for c in columns)
              + " |")
        w("")
    for note in a["notes"]:
        w(f"- {note}")
    if "rejection_us" in a:
        w(f"\nBreaker open: a refused call costs {spread(a['rejection_us'], '{:.1f}')} µs wall, "
          f"{spread(a['rejection_cpu_us'], '{:.1f}')} µs CPU (1000 calls per round), against "
          f"{med(o['wall_us']['plain']):.0f} µs for one plain successful request.")
    w(f"\n![outage amplification]({image('bench_outage.png')})\n")

    th = results["threads"]
    w(f"## 5. Threads sharing one session (GET /ok, {th['rounds']} rounds of "
      f"~{th['requests_per_round']} requests)\n")
    w("| threads | plain req/s | ours req/s | ours/plain |")
    w("| --- | --- | --- | --- |")
    for count, row in th["by_threads"].items():
        w(f"| {count} | {spread(row['req_per_s']['plain'])} | "
          f"{spread(row['req_per_s']['ours'])} | {ratio_cell(row['ratio'])} |")
    w(f"\n{threads_verdict(th)}")
    w(f"\nA `requests` client is CPU-bound under the GIL, so with threads the ratio follows "
      f"the CPU ratio of section 1 ({med(o['cpu_ratio']['ours']):.3f}× CPU there, i.e. "
      f"{1 / med(o['cpu_ratio']['ours']):.3f}× the throughput).")
    w(f"\n![threads]({image('bench_threads.png')})\n")

    w("## 6. Redis state store\n")
    w("A success costs no Redis round trip (local breaker views, batched successes and "
      "deposits), so the target is at most 20 µs median added per successful request with "
      "breaker + budget over the in-memory store, measured in the same run; the state work "
      "alone is the stable figure, the HTTP difference carries the machine's noise. "
      "pybreaker's Redis storage is measured beside it.\n")
    w(f"```\n{results['redis'].strip()}\n```" if results.get("redis") else
      "Not measured: `benchmarks/bench_redis_state.py` is not in this build.")
    w("")
    if results.get("throttle"):
        w(results["throttle"].strip())
        w("\n![throttle](benchmarks/bench_throttle.png)\n")
    path.write_text("\n".join(out))


# -- plots ----------------------------------------------------------------------------------

def _bars(ax: Any, labels: list[str], values: list[list[float]], color: str,
          xlabel: str, label_format: str = ".3g", xmin: float = 0.0) -> None:
    mids = [med(v) for v in values]
    lows = [m - min(v) for m, v in zip(mids, values)]
    highs = [max(v) - m for m, v in zip(mids, values)]
    colors = ["#d62728" if label.startswith("ours") else color for label in labels]
    ax.barh(labels, mids, xerr=[lows, highs], color=colors, capsize=3,
            error_kw={"elinewidth": 1})
    for y, v in enumerate(values):
        if len(v) >= 4:  # thick: the interquartile range, where most rounds fall
            q1, _, q3 = statistics.quantiles(v, n=4)
            ax.hlines(y, q1, q3, color="black", linewidth=4, alpha=0.6)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    top = max(max(v) for v in values)
    for y, (m, v) in enumerate(zip(mids, values)):
        # The label sits right of the whisker, so that it never overlaps the error bar.
        ax.text(max(v) + top * 0.01, y, f" {m:{label_format}}", va="center", ha="left",
                fontsize=8)
    ax.set_xlim(left=xmin, right=top * 1.15)


def write_plots(results: dict[str, Any], plots: Path = HERE) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(LIBRARIES)
    o = results["overhead"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, title in ((axes[0], "wall_ratio", "wall time"),
                           (axes[1], "cpu_ratio", "client CPU time")):
        values = [o[key][n] for n in o[key]]
        low = min(min(v) for v in values)
        _bars(ax, list(o[key]), values, "#1f77b4" if key == "wall_ratio" else "#2ca02c",
              f"{title} per request ÷ plain's\n"
              "(bar: median; thick: quartiles; whiskers: min–max)", ".3f",
              xmin=min(0.9, low * 0.97))
        ax.axvline(1.0, color="black", linewidth=1)
        ax.axvline(1.03, color="black", linestyle=":", linewidth=1, label="goal for ours: 1.03×")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("1. Success-path overhead vs plain HTTPAdapter: GET /ok, keep-alive "
                 "(lower is better)")
    fig.tight_layout()
    fig.savefig(plots / "bench_overhead.png", dpi=110)
    plt.close(fig)

    t = results["throughput"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    _bars(ax, names, [t["mbps"][n] for n in names], "#1f77b4", "MB/s (median, min–max)")
    ax.set_title("2. 10 MB body throughput (higher is better)")
    fig.tight_layout()
    fig.savefig(plots / "bench_throughput.png", dpi=110)
    plt.close(fig)

    d = results["deadline"]
    labels = ["ours", *d["peers_elapsed_s"]]
    values = [[d["timeout"] + x / 1e3 for x in d["overshoot_ms"]],
              *d["peers_elapsed_s"].values()]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    _bars(ax, labels, values, "#7f7f7f", "seconds until the call returns (median, min–max)",
          ".3f")
    ax.axvline(d["timeout"], color="black", linestyle="--", linewidth=1)
    ax.text(d["timeout"], len(labels) - 0.55, " timeout=1 s", fontsize=8, va="bottom")
    ax.set_title("3. Slow drip (1 byte / 50 ms for 5 s) with timeout=1 s")
    fig.tight_layout()
    fig.savefig(plots / "bench_deadline.png", dpi=110)
    plt.close(fig)

    a = results["outage"]
    labels = list(a["attempts_per_call"])
    shapes = [c for c in next(iter(a["failures"].values())) if c != "outage"] \
        if a.get("failures") else []
    fig, axes = plt.subplots(1, 1 + len(shapes), figsize=(8 + 4.5 * len(shapes), 3.6),
                             squeeze=False)
    ax = axes[0][0]
    _bars(ax, labels, [[a["attempts_per_call"][n]] for n in labels], "#9467bd",
          "server-side attempts per call (exact counts)", ".2f")
    ax.set_title("4. Outage (every request 503)")
    for ax, shape in zip(axes[0][1:], shapes):
        names = list(a["failures"])
        _bars(ax, names, [[a["failures"][n][shape]["attempts_per_call"]] for n in names],
              "#9467bd", "attempts per call", ".2f")
        ax.set_title(shape)
    fig.tight_layout()
    fig.savefig(plots / "bench_outage.png", dpi=110)
    plt.close(fig)

    th = results["threads"]["by_threads"]
    counts = list(th)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    x = [int(c) for c in counts]
    for name, color in (("plain", "#1f77b4"), ("ours", "#d62728")):
        mids = [med(th[c]["req_per_s"][name]) for c in counts]
        errs = [[m - min(th[c]["req_per_s"][name]) for m, c in zip(mids, counts)],
                [max(th[c]["req_per_s"][name]) - m for m, c in zip(mids, counts)]]
        axes[0].errorbar(x, mids, yerr=errs, marker="o", capsize=3, label=name, color=color)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(x, [str(v) for v in x])
    axes[0].set_xlabel("threads sharing one session")
    axes[0].set_ylabel("requests per second")
    axes[0].set_ylim(bottom=0)
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    mids = [med(th[c]["ratio"]) for c in counts]
    errs = [[m - min(th[c]["ratio"]) for m, c in zip(mids, counts)],
            [max(th[c]["ratio"]) - m for m, c in zip(mids, counts)]]
    axes[1].errorbar(x, mids, yerr=errs, marker="o", capsize=3, color="#d62728")
    axes[1].axhline(1.0, color="black", linestyle="--", linewidth=1)
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(x, [str(v) for v in x])
    axes[1].set_xlabel("threads sharing one session")
    axes[1].set_ylabel("ours / plain throughput")
    axes[1].set_ylim(0, max(1.2, max(max(th[c]["ratio"]) for c in counts) * 1.05))
    axes[1].grid(alpha=0.3)
    fig.suptitle("5. Threads: throughput (median, min–max over rounds)")
    fig.tight_layout()
    fig.savefig(plots / "bench_threads.png", dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run")
    parser.add_argument("--write", action="store_true",
                        help="regenerate the tracked results: BENCHMARKS.md, "
                        "benchmarks/results.json and benchmarks/*.png")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where a run without --write puts its report, JSON and plots "
                        "(default: $TMPDIR/requests-smartretry-bench)")
    parser.add_argument("--output", type=Path, default=None,
                        help="the markdown report (default: BENCHMARKS.md in that place)")
    parser.add_argument("--only", action="append", metavar="SECTION",
                        help="run only this section (overhead, retried, profile, pure, "
                        "throughput, deadline, outage, threads; repeatable) and print its "
                        "table (overhead, retried, threads) or its results as JSON; writes "
                        "no report, no plot")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="also measure ours as of another revision, side by side: DIR "
                        "from `python benchmarks/baseline.py REF DIR` (clients '... "
                        "(before)' in §1, §1b and §5)")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the plots and the report from benchmarks/results.json")
    args = parser.parse_args(argv)
    if args.against is not None:
        os.environ["BENCH_AGAINST"] = str(args.against.resolve())
    if args.write and args.out is not None:
        parser.error("--write regenerates the tracked files; --out names another place")
    # A run writes outside the checkout unless asked to regenerate the tracked results.
    dest = HERE if args.write else (
        args.out or Path(tempfile.gettempdir()) / "requests-smartretry-bench")
    dest.mkdir(parents=True, exist_ok=True)
    report = args.output or (ROOT if args.write else dest) / "BENCHMARKS.md"
    if args.replot:
        saved = json.loads((dest / "results.json").read_text())
        write_plots(saved, dest)
        write_report(saved, report, dest)
        return 0
    # No handler anywhere: log records are still built (their cost is measured), never shown.
    logging.getLogger().addHandler(logging.NullHandler())
    quick = args.quick
    started = time.perf_counter()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results: dict[str, Any] = {}
    with server_process() as server:
        steps: list[tuple[str, Callable[[], Any]]] = [
            # Many short rounds: pairs of adjacent 50-request batches see the same machine
            # state, so the paired ratios are far tighter than with long rounds.
            ("overhead", lambda: bench_overhead(server, 60 if quick else 400,
                                                25 if quick else 50)),
            ("retried", lambda: bench_retried(server, 60 if quick else 200,
                                              25 if quick else 50)),
            ("profile", lambda: profile_ours(server, 500 if quick else 2000)),
            ("pure", lambda: bench_pure_overhead(5 if quick else 15, 2000 if quick else 5000)),
            ("throughput", lambda: bench_throughput(server, 4 if quick else 15,
                                                    2 if quick else 5)),
            ("deadline", lambda: bench_deadline(server, 3 if quick else 10, 1 if quick else 2)),
            ("outage", lambda: bench_outage(server, 100 if quick else 1000, 3 if quick else 10)),
            ("threads", lambda: bench_threads(server, (1, 4, 16), 3 if quick else 10,
                                              400 if quick else 2000)),
        ]
        if args.only:
            unknown = set(args.only) - {name for name, _ in steps}
            if unknown:
                parser.error(f"--only: no section named {', '.join(sorted(unknown))}")
            steps = [(name, step) for name, step in steps if name in args.only]
        for name, step in steps:
            print(f"[{time.perf_counter() - started:6.1f} s] {name}...", flush=True)
            results[name] = step()
    if args.only:
        print(f"{len(os.environ)} environment variables; load average {load_before} before, "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after")
        for name, result in results.items():
            if name == "overhead":
                print(_paired_table(result, "plain"), overhead_verdict(result), sep="\n")
            elif name == "retried":
                print(_paired_table(result, "urllib3 Retry", "call"), retried_verdict(result),
                      sep="\n")
            elif name == "threads":
                for count, row in result["by_threads"].items():
                    for ours in row.get("ratios", {"ours": row["ratio"]}):
                        cpu = row.get("cpu_ratio", {}).get(ours)
                        print(f"{count} threads: {ours}/plain throughput "
                              f"{ratio_cell_iqr(row['ratios'][ours])}"
                              + ("" if cpu is None else
                                 f"; CPU per request {ratio_cell_iqr(cpu)}"))
                print(threads_verdict(result))
            else:
                print(json.dumps({name: result}, indent=1, ensure_ascii=False))
        return 0
    print(f"[{time.perf_counter() - started:6.1f} s] redis...", flush=True)
    redis = bench_redis(quick)
    if redis is not None:
        results["redis"] = redis
    print(f"[{time.perf_counter() - started:6.1f} s] throttle...", flush=True)
    throttle = bench_throttle(quick)
    if throttle is not None:
        results["throttle"] = throttle
    results["meta"] = {
        "command": "python benchmarks/run.py" + (" --quick" if quick else "")
        + (" --write" if args.write else ""),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": time.perf_counter() - started,
        "machine": machine(),
        "versions": versions(),
        "load_before": load_before,
        # requests walks the environment on every request (proxy settings), so its size
        # moves every client's cost, plain's included: it is part of the machine.
        "environment_variables": len(os.environ),
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    (dest / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    write_plots(results, dest)
    write_report(results, report, dest)
    print(f"[{time.perf_counter() - started:6.1f} s] wrote {report}, {dest}/results.json and "
          f"{dest}/bench_*.png" + ("" if args.write else " (--write regenerates the tracked "
                                   "ones)"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
