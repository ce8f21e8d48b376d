"""A real ``redis-server`` on a free loopback port for the tests, and the code that the
multi-process tests run in their worker processes (importable by spawned children).

Without the binary the Redis tests skip with a reason, except under ``CI=true`` where a
missing Redis fails them (CI installs it: ``apt-get install -y redis-server``).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from requests_smartretry.faultserver import unused_port

_CANDIDATES = ("redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server")


def _required(candidates: tuple[str, ...], reason: str) -> str:
    """The first binary found; skips the test without one (fails it under CI=true)."""
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true, so this is a failure, not a skip")
    pytest.skip(reason)


def redis_binary() -> str:
    """The redis-server binary (also a Sentinel with ``--sentinel``)."""
    return _required(_CANDIDATES, "redis-server binary not found (apt-get install "
                                  "redis-server) - Redis tests need it")


def redis_cli() -> str:
    """The redis-cli binary, which creates the test Cluster."""
    return _required(("redis-cli",), "redis-cli not found (apt-get install redis-tools) - "
                                     "Redis Cluster tests need it")


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (no persistence), stoppable and
    restartable on the same port."""

    def __init__(self, port: Optional[int] = None, *, extra: tuple[str, ...] = (),
                 config: Optional[str] = None) -> None:
        self.binary = redis_binary()
        self.port = port or unused_port()
        self.extra = extra
        self.config = config  # a config file to start from (a Sentinel's)
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        head = [self.binary] if self.config is None else [self.binary, self.config]
        # A master that feeds a replica writes an RDB even with --save "": into a directory
        # of its own, never the working tree.
        workdir = () if "--dir" in self.extra else ("--dir", tempfile.mkdtemp(prefix="redis-"))
        self.process = subprocess.Popen(
            [*head, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning",
             *workdir, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 20s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the abrupt outage the store must survive."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _wait_for(check: Any, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {seconds:g}s")


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = unused_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def running_cluster(workdir: str) -> Iterator[list[RedisServer]]:
    """A 3-master Redis Cluster on loopback (no replicas; a node that dies leaves its
    slots uncovered, the others keep serving)."""
    cli = redis_cli()
    nodes = []
    try:
        for _ in range(3):
            port = _cluster_port()
            nodes.append(RedisServer(port, extra=(
                "--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
                "--cluster-require-full-coverage", "no",
                "--cluster-config-file", os.path.join(workdir, f"nodes-{port}.conf"),
                "--dir", workdir)).start())
        subprocess.run([cli, "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=30)
        import redis

        def ready() -> bool:
            return all(redis.Redis(port=n.port, socket_timeout=1).cluster("info")
                       .get("cluster_state") == "ok" for n in nodes)

        _wait_for(ready, "Redis Cluster")
        yield nodes
    finally:
        for node in nodes:
            node.kill()


@contextlib.contextmanager
def running_sentinel(workdir: str) -> Iterator[tuple[RedisServer, RedisServer, RedisServer]]:
    """A master, one replica and a Sentinel watching them as ``mymaster`` (quorum 1,
    down after 0.5 s), so that killing the master promotes the replica in seconds."""
    master = RedisServer().start()
    replica = sentinel = None
    try:
        replica = RedisServer(extra=("--replicaof", "127.0.0.1", str(master.port))).start()
        import redis

        _wait_for(lambda: redis.Redis(port=replica.port, socket_timeout=1).info(
            "replication").get("master_link_status") == "up", "Redis replica")
        config = os.path.join(workdir, "sentinel.conf")
        with open(config, "w") as handle:
            handle.write(f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
                         "sentinel down-after-milliseconds mymaster 500\n"
                         "sentinel failover-timeout mymaster 3000\n"
                         f"dir {workdir}\n")
        sentinel = RedisServer(config=config, extra=("--sentinel",)).start()
        _wait_for(lambda: redis.Redis(port=sentinel.port, socket_timeout=1).sentinel_masters()
                  .get("mymaster", {}).get("num-slaves", 0) >= 1, "Sentinel")
        yield master, replica, sentinel
    finally:
        for server in (sentinel, replica, master):
            if server is not None:
                server.kill()


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A started server, killed afterwards."""
    with RedisServer() as server:
        yield server


def client(url: str) -> Any:
    """A plain redis-py client for inspecting what the stores wrote."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)


# -- code run inside worker processes (importable and picklable) -----------------------


def _no_sleep(seconds: float) -> None:
    return None


def failing_calls(redis_url: str, url: str, calls: int, threshold: int) -> list[str]:
    """Make ``calls`` single-attempt calls to ``url`` with a breaker shared through Redis;
    return what each call ended in (a status code, or the exception's type name)."""
    from requests_smartretry import CircuitBreaker, CircuitOpenError, smart_session

    breaker = CircuitBreaker(failure_threshold=threshold, recovery_timeout=300.0)
    session = smart_session(max_retries=0, breaker=breaker, budget=None, state=_store(redis_url),
                            log=False, timeout=10.0)
    results = []
    for _ in range(calls):
        try:
            results.append(str(session.get(url).status_code))
        except CircuitOpenError:
            results.append("CircuitOpenError")
    return results


def budgeted_calls(redis_url: Optional[str], url: str, calls: int, ratio: float,
                   max_tokens: float) -> int:
    """Make ``calls`` calls (3 retries each) under a retry budget shared through Redis;
    return the calls made."""
    from requests_smartretry import RetryBudget, smart_session

    budget = RetryBudget(ratio, max_tokens=max_tokens, min_per_second=0.0)
    session = smart_session(max_retries=3, budget=budget, state=_store(redis_url), log=False,
                            sleep=_no_sleep, timeout=10.0)
    for _ in range(calls):
        session.get(url).close()
    store = session.get_adapter(url).state
    if store is not None and not store.shared:
        raise AssertionError("Redis was not reachable for the whole run")
    return calls


def retried_storm(redis_url: str, prefix: str, base: str, threads: int, calls: int,
                  steps: str) -> list[int]:
    """``threads`` threads making ``calls`` calls each (``steps`` per call, as many
    retries as it needs, 20 ms before each) under the default budget shared through Redis;
    return every call's status code (0 for one that raised)."""
    import threading

    from requests_smartretry import RetryBudget, smart_session

    store = shared_store(redis_url, prefix=prefix)
    session = smart_session(max_retries=steps.count(","), budget=RetryBudget(), state=store,
                            log=False, sleep=lambda seconds: time.sleep(0.02), timeout=10.0,
                            pool_maxsize=threads)
    codes: list[int] = []

    def caller(index: int) -> None:
        for i in range(calls):
            try:
                codes.append(session.get(f"{base}/seq/{prefix}-{os.getpid()}-{index}-{i}"
                                         f"?steps={steps}").status_code)
            except Exception:
                codes.append(0)

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    if not store.shared:
        raise AssertionError("Redis was not reachable for the whole run")
    store.close()
    return codes


#: The time budget of stores in tests about sharing, not latency: on a loaded machine a
#: thread may wait longer than the 50 ms default for the CPU, which the store would rightly
#: treat as a slow Redis.
SHARING_BUDGET = 2.0


def shared_store(target: Any, **options: Any) -> Any:
    """A ``RedisStateStore`` for a test about sharing (see :data:`SHARING_BUDGET`)."""
    from requests_smartretry.redis_state import RedisStateStore

    options.setdefault("time_budget", SHARING_BUDGET)
    return RedisStateStore(target, **options)


def _store(redis_url: Optional[str]) -> Any:
    return None if redis_url is None else shared_store(redis_url)


def random_events(redis_url: str, prefix: str, seed: int, events: int) -> tuple[int, int]:
    """Feed ``events`` random attempt results to a shared breaker and spend one budget
    token per event; return (failures fed, retries granted)."""
    from requests_smartretry import AttemptEvent, CircuitBreaker, EventKind, RetryBudget, Verdict

    store = shared_store(redis_url, prefix=prefix, socket_timeout=5.0)
    # Thresholds out of reach: the test counts updates, not transitions.
    breaker = CircuitBreaker(failure_threshold=10**9, window=3600.0, store=store)
    budget = RetryBudget(0.0, max_tokens=10**6, min_per_second=0.0, store=store)
    rng = random.Random(seed)
    failures = granted = 0
    for number in range(events):
        failed = rng.random() < 0.5
        failures += failed
        breaker.before_attempt("svc")
        breaker(AttemptEvent(
            kind=EventKind.FAILURE if failed else EventKind.SUCCESS, operation="op",
            service="svc", attempt=1, max_attempts=1, call_id=number,
            verdict=Verdict.SERVER_ERROR if failed else Verdict.SUCCESS))
        granted += budget.allow_retry("svc")
    assert store.shared, "Redis was reachable for the whole run"
    store.close()  # sends the successes still batched locally
    return failures, granted


def _entry(results: Any, index: int, function: Any, args: tuple[Any, ...]) -> None:
    try:
        results.put((index, "ok", function(*args)))
    except BaseException as exc:  # reported to the test, which fails with it
        results.put((index, "error", repr(exc)))


@contextlib.contextmanager
def paused_at(server: RedisServer, moment: float, milliseconds: int) -> Iterator[None]:
    """Within the block, ``server`` pauses every client (``CLIENT PAUSE ... ALL``) at the
    wall-clock ``moment`` for ``milliseconds`` (a sick Redis in the middle of a run); a
    pause not yet begun when the block ends is called off."""
    import threading

    import redis as redis_py

    pauser = threading.Timer(moment - time.time(), lambda: redis_py.Redis(
        port=server.port).execute_command("CLIENT", "PAUSE", str(milliseconds), "ALL"))
    pauser.start()
    try:
        yield
    finally:
        pauser.cancel()


def in_processes(
    function: Any, arguments: list[tuple[Any, ...]], timeout: float = 120
) -> list[Any]:
    """Run ``function(*args)`` for each ``args`` in its own process, all at once;
    return the results in order (an error in a child fails the test)."""
    import multiprocessing

    # forkserver: children fork from a clean server process that has the library imported
    # once, so each starts fast, and none inherits the test process's threads.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["requests", "redis", "requests_smartretry", __name__])
    results = context.Queue()
    processes = [context.Process(target=_entry, args=(results, index, function, args))
                 for index, args in enumerate(arguments)]
    for process in processes:
        process.start()
    collected: dict[int, Any] = {}
    try:
        for _ in processes:
            index, status, value = results.get(timeout=timeout)
            if status != "ok":
                pytest.fail(f"worker {index} failed: {value}")
            collected[index] = value
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return [collected[index] for index in range(len(arguments))]


class FakeRedis:
    """A TCP server on loopback posing as Redis: each accepted connection is handed to
    :meth:`_handle` on a thread of its own."""

    def __init__(self) -> None:
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)

    def __enter__(self) -> FakeRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GarbageRedis(FakeRedis):
    """Answers every read with bytes that are not RESP."""

    def _handle(self, conn: socket.socket) -> None:
        import threading

        threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        with conn:
            try:
                while conn.recv(65536):
                    conn.sendall(b"%%% this is not redis \x00\xff\r\n")
            except OSError:
                return


class SlowProxy(FakeRedis):
    """A TCP proxy in front of a real Redis that delays every reply by ``delay`` seconds,
    or (``drip``) sends replies one byte every ``drip`` seconds; the first reply on each
    connection comes ``first`` seconds later still (a new connection's handshake on a
    busy machine).  ``connections``: how many it accepted."""

    def __init__(self, port: int, *, delay: float = 0.0, drip: float = 0.0,
                 first: float = 0.0) -> None:
        self.upstream = port
        self.delay = delay
        self.drip = drip
        self.first = first
        self.connections = 0
        self._answered: set[int] = set()
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        import threading

        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            conn.close()
            return
        self.connections += 1
        threading.Thread(target=self._pipe, args=(conn, upstream, False), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, conn, True), daemon=True).start()

    def _forward(self, data: bytes, source: socket.socket, target: socket.socket,
                 replies: bool) -> None:
        if not replies:
            target.sendall(data)
            return
        if id(target) not in self._answered:
            self._answered.add(id(target))
            time.sleep(self.first)
        if self.drip:
            for index in range(len(data)):
                time.sleep(self.drip)
                target.sendall(data[index:index + 1])
        else:
            time.sleep(self.delay)
            target.sendall(data)

    def _pipe(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self._forward(data, source, target, replies)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.close()
                except OSError:
                    pass



class StalledSubscriptions(SlowProxy):
    """A TCP proxy in front of a real Redis that, once ``stall`` is set, silently drops
    everything on connections that subscribed (a dead subscription with no reset, as
    behind a stalled proxy or a dropped NAT entry); other connections flow."""

    def __init__(self, port: int) -> None:
        self.stall = False
        self._subscribed: set[int] = set()
        super().__init__(port)

    def _forward(self, data: bytes, source: socket.socket, target: socket.socket,
                 replies: bool) -> None:
        client_side = id(target if replies else source)
        if not replies and b"SUBSCRIBE" in data.upper():
            self._subscribed.add(client_side)
        if not (self.stall and client_side in self._subscribed):
            target.sendall(data)


def open_breaker_then_report(redis_url: str, service: str, ready: Any, go: Any,
                             results: Any) -> None:
    """(in a worker process) Trip ``service``'s shared breaker when ``go`` is set; put
    the wall-clock time at which it was open in Redis on ``results``."""
    from requests_smartretry import AttemptEvent, CircuitBreaker, EventKind, Verdict

    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60.0,
                             store=_store(redis_url))
    breaker.before_attempt(service)  # connected, script loaded
    ready.set()
    go.wait(30)
    breaker(AttemptEvent(kind=EventKind.FAILURE, operation="op", service=service, attempt=1,
                         max_attempts=1, call_id=1, verdict=Verdict.NETWORK))
    results.put(time.time())


def force_then_report(redis_url: str, service: str, action: str, ready: Any, go: Any,
                      results: Any) -> None:
    """(in a worker process) ``force_open`` / ``reset`` ``service``'s shared breaker when
    ``go`` is set; put the wall-clock time at which Redis had it on ``results``."""
    from requests_smartretry import CircuitBreaker

    breaker = CircuitBreaker(recovery_timeout=60.0, store=_store(redis_url))
    breaker.state(service)  # connected, script loaded
    ready.set()
    go.wait(30)
    getattr(breaker, action)(service)
    results.put(time.time())


def seconds_until_seen(worker: Any, args: tuple[Any, ...], session: Any, url: str, *,
                       refused: bool) -> float:
    """Run ``worker(*args, ready, go, results)`` in another process (it changes a shared
    breaker when told to go, and reports when); return the seconds from that change until
    this ``session`` starts a GET of ``url`` that is refused (``refused``) or goes through
    again: the call is admitted or refused when it starts, so the time its request then
    spends at the server (long on a loaded machine) is not the change's propagation."""
    import multiprocessing

    from requests_smartretry import CircuitOpenError

    context = multiprocessing.get_context("forkserver")
    ready, go, results = context.Event(), context.Event(), context.Queue()
    process = context.Process(target=worker, args=(*args, ready, go, results))
    process.start()
    try:
        assert ready.wait(30)
        time.sleep(0.2)  # our view is past any poll interval: only a notification helps
        go.set()
        seen_at = None
        deadline = time.monotonic() + 5.0
        while seen_at is None and time.monotonic() < deadline:
            started = time.time()
            try:
                session.get(url)
                if not refused:
                    seen_at = started
            except CircuitOpenError:
                if refused:
                    seen_at = started
            time.sleep(0.002)
        changed_at = results.get(timeout=30)
    finally:
        process.join(10)
    assert seen_at is not None, "the other process's change never reached this one"
    return max(0.0, float(seen_at - changed_at))


def _barrier(redis_url: str, key: str, parties: int) -> None:
    """Wait (up to 60 s) until ``parties`` processes reached ``key``."""
    counter = client(redis_url)
    counter.incr(key)
    deadline = time.monotonic() + 60.0
    while int(counter.get(key) or 0) < parties and time.monotonic() < deadline:
        time.sleep(0.002)


def healing_call(redis_url: str, prefix: str, url: str, parties: int) -> str:
    """With ``parties`` processes at once, make one call (one retry, no backoff) through a
    breaker (threshold 5) shared through Redis; return its status code or the exception's
    type.  The store is closed (its batch sent) only once every process made its call,
    as a long-running worker's would be."""
    from requests_smartretry import CircuitBreaker, CircuitOpenError, smart_session

    store = shared_store(redis_url, prefix=prefix)
    breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=30.0)
    session = smart_session(max_retries=1, breaker=breaker, budget=None, state=store,
                            log=False, sleep=_no_sleep, timeout=10.0)
    breaker.state("warm-up")  # connected before the start
    _barrier(redis_url, f"{prefix}:ready", parties)
    try:
        result = str(session.get(url).status_code)
    except CircuitOpenError:
        result = "CircuitOpenError"
    _barrier(redis_url, f"{prefix}:done", parties)
    store.close()
    return result


def paced_calls(redis_url: str, url: str, seconds: float, threads: int,
                rate: float, max_in_flight: Optional[int] = None, burst: int = 1,
                time_budget: float = SHARING_BUDGET,
                start_at: Optional[float] = None) -> dict[str, Any]:
    """Call ``url`` from ``threads`` threads for ``seconds`` (from the wall-clock moment
    ``start_at``, or now) under ``Throttle(rate=..., burst=...)`` shared through Redis;
    return the answers seen (status code -> count) and whether Redis was reachable all
    along."""

    from requests_smartretry import Throttle, smart_session

    throttle = Throttle(rate=rate, burst=burst, max_in_flight=max_in_flight)
    session = smart_session(max_retries=0, budget=None, throttle=throttle, log=False,
                            state=shared_store(redis_url, time_budget=time_budget),
                            timeout=10.0)
    answers = _answers(session, url, seconds, threads, start_at)
    store = session.get_adapter(url).state
    return {"answers": answers, "shared": store.shared}


def _answers(session: Any, url: str, seconds: float, threads: int,
             start_at: Optional[float]) -> dict[str, int]:
    """Call ``url`` through ``session`` from ``threads`` threads for ``seconds`` (from the
    wall-clock moment ``start_at``, if given): the answers seen (status code, or
    ``ThrottledError``, -> count)."""
    import threading

    from requests_smartretry import ThrottledError

    answers: dict[str, int] = {}
    lock = threading.Lock()
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    until = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < until:
            try:
                key = str(session.get(url).status_code)
            except ThrottledError:
                key = "ThrottledError"
            with lock:
                answers[key] = answers.get(key, 0) + 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return answers


def slot_calls(redis_url: str, url: str, seconds: float, threads: int, max_in_flight: int,
               start_at: float, time_budget: float = 0.3) -> dict[str, Any]:
    """Call ``url`` from ``threads`` threads for ``seconds`` (from the wall-clock moment
    ``start_at``) under ``Throttle(max_in_flight=...)`` shared through Redis; return the
    answers seen (status code -> count)."""

    from requests_smartretry import Throttle, smart_session

    session = smart_session(max_retries=0, budget=None, log=False, timeout=10.0,
                            throttle=Throttle(max_in_flight=max_in_flight),
                            state=shared_store(redis_url, time_budget=time_budget,
                                               retry_interval=0.1))
    return _answers(session, url, seconds, threads, start_at)


def ticket_holders(redis_url: str, service: str, threads: int, rate: float) -> None:
    """``threads`` threads each wait (30 s at most) for a turn on ``service`` of a
    ``Throttle(rate=..., adaptive=True)`` shared through Redis, and then hold it: most of
    them hold tickets in the fleet's queue when the test kills this process."""
    import threading

    from requests_smartretry import Throttle

    throttle = Throttle(rate=rate, adaptive=True)
    throttle.use_store(shared_store(redis_url))

    def wait_for_a_turn() -> None:
        turn = throttle.turn(service, 30.0)
        wait = turn.step(throttle.clock())
        while wait is not None:
            time.sleep(wait)
            wait = turn.step(throttle.clock())

    for _ in range(threads):
        threading.Thread(target=wait_for_a_turn, daemon=True).start()
    time.sleep(60.0)
