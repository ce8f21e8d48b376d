"""The guided tour: ``python -m requests_smartretry demo``.

Starts a :class:`~requests_smartretry.faultserver.FaultServer` on loopback and walks
through what the library does, one scenario at a time, printing the real log lines that
each call writes and, at the end, a statistics table.  It needs nothing but the package
and finishes in a few seconds (the delays are real, only shortened).

Read the scenario methods of :class:`Tour` as documentation: each is the code a user
would write, followed by what happened.
"""

from __future__ import annotations

import base64
import concurrent.futures
import logging
import sys
import time
from typing import Any, Literal, Optional, TextIO

import requests
from urllib3.util.retry import Retry

from .adapter import SmartRetryAdapter
from .breaker import CircuitBreaker
from .budget import RetryBudget
from .errors import CircuitOpenError, attempt_history
from .events import AttemptEvent, EventKind
from .faultserver import FaultServer
from .functions import execute_with_retry
from .stats import Stats

__all__ = ["Tour", "format_stats_table", "run_demo"]

_logger = logging.getLogger("requests_smartretry")

# Short real delays keep the tour under a few seconds (the library's defaults are 1 s, 2 s…).
_DEMO_BACKOFF = 0.2


# The statistics table: (group, column title, snapshot field).  Calls and attempts are
# counted apart (a call that succeeded on its second attempt is 1 ok call and 1 failed
# attempt); latencies are seconds per call.
_COLUMNS = (
    ("calls", "total", "calls"),
    ("calls", "ok", "calls_succeeded"),
    ("calls", "gave up", "calls_failed"),
    ("calls", "refused", "calls_refused"),
    ("attempts", "total", "attempts"),
    ("attempts", "failed", "attempts_failed"),
    ("attempts", "retries", "retries"),
    ("seconds per call", "p50", "p50"),
    ("seconds per call", "p99", "p99"),
)
_NAME_WIDTH = 24  # longer operation names are cut, so that the table fits 100 columns


def format_stats_table(snapshot: dict[str, Any]) -> str:
    """Render a :meth:`Stats.snapshot` as a plain-text table (within 100 columns:
    longer operation names are cut to 24 characters), totals last, then the failed
    attempts by verdict.

    Calls (``total``, ``ok``, ``gave up``, ``refused`` by the breaker) and attempts
    (``total``, ``failed``, ``retries``) are separate column groups; the call times are
    the p50/p99 in seconds per call.
    """
    every = {op: row for op, row in snapshot.items() if isinstance(row, dict)}
    # A row with waits and no calls of its own (the wait's name, not its polls') is shown
    # under "Waits" only.
    rows = {op: row for op, row in every.items()
            if row.get("calls") or not row.get("waits") or op == Stats.TOTAL_KEY}
    if not rows:
        return "(no calls recorded)"
    order = sorted(rows, key=lambda op: op == Stats.TOTAL_KEY)  # stable: totals go last
    names = [_name(op) for op in order]
    body = []
    for op in order:
        row = rows[op]
        latency = row.get("call_seconds") or {}
        body.append([_seconds(latency.get(field)) if group == "seconds per call"
                     else _cell(row.get(field)) for group, _, field in _COLUMNS])
    titles = [title for _, title, _ in _COLUMNS]
    widths = [max(len(titles[i]), *(len(line[i]) for line in body)) for i in range(len(titles))]
    name_width = max(len("operation"), *(len(n) for n in names))
    groups: list[tuple[str, int]] = []  # (title, width) of each column group
    for index, (group, _, _) in enumerate(_COLUMNS):
        if groups and groups[-1][0] == group:
            groups[-1] = (group, groups[-1][1] + 2 + widths[index])
        else:
            groups.append((group, widths[index]))
        last = index + 1 == len(_COLUMNS) or _COLUMNS[index + 1][0] != group
        short = len(group) + 2 - groups[-1][1]
        if last and short > 0:  # widen the group's last column to fit its title
            widths[index] += short
            groups[-1] = (group, groups[-1][1] + short)
    lines = [
        (" " * name_width + "  " + "  ".join(f" {g} ".center(w, "-") for g, w in groups)
         ).rstrip(),
        "  ".join(["operation".ljust(name_width)]
                  + [t.ljust(widths[i]) for i, t in enumerate(titles)]).rstrip(),
    ]
    for name, line in zip(names, body):
        lines.append("  ".join([name.ljust(name_width)]
                               + [c.ljust(widths[i]) for i, c in enumerate(line)]).rstrip())
    by_verdict = []
    for op, name in zip(order, names):
        verdicts = rows[op].get("attempts_failed_by_verdict") or {}
        text = " ".join(f"{k}={v}" for k, v in sorted(verdicts.items()) if v)
        if text:
            by_verdict.append(f"  {name}: {text}")
    if by_verdict:
        lines += ["", "Failed attempts by verdict:", *by_verdict]
    waits = []
    for op in sorted(every):
        row, name = every[op], _name(op)
        if row.get("waits") and op != Stats.TOTAL_KEY:
            outcomes = " ".join(f"{k}={v}" for k, v in sorted(row["waits_by_outcome"].items()))
            to_done = (row.get("seconds_to_done") or {}).get("p50")
            waits.append(f"  {name}: {row['waits']} wait(s), {row['polls']} polls "
                         f"({outcomes}), p50 time to done {_seconds(to_done)} s")
    if waits:
        lines += ["", "Waits for a task (polls that were not done are not failures):", *waits]
    return "\n".join(lines)


def _name(operation: str) -> str:
    if operation == Stats.TOTAL_KEY:
        return "total"
    return operation if len(operation) <= _NAME_WIDTH else operation[:_NAME_WIDTH - 1] + "…"


def _seconds(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


class Tour:
    """The demo's scenarios against one local :class:`FaultServer`.

    Example::

        with FaultServer() as server:
            Tour(server, out=sys.stdout, lang="en").run()
    """

    def __init__(self, server: FaultServer, *, out: TextIO,
                 lang: Literal["zh", "en"] = "zh") -> None:
        self.server = server
        self.out = out
        self.lang = lang
        self.stats = Stats()  # one table for every scenario's adapter
        self.step = 0

    # -- helpers ---------------------------------------------------------------------

    def session(self, operation: str, **options: Any) -> requests.Session:
        """A session with our adapter, named ``operation`` in log lines and statistics."""
        options.setdefault("max_retries", 2)
        options.setdefault("timeout", 2.0)
        options.setdefault("backoff_base", _DEMO_BACKOFF)
        options.setdefault("lang", self.lang)
        adapter = SmartRetryAdapter(operation_name=operation, stats=self.stats, **options)
        session = requests.Session()
        session.mount("http://", adapter)
        return session

    def heading(self, title: str) -> None:
        self.step += 1
        self.say(f"\n{self.step}. {title}")

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def result(self, text: str) -> None:
        self.say(f"   => {text}")

    def timed_out(self, session: requests.Session, path: str, note: str) -> None:
        """GET ``path``, expected to end in a timeout, and say how long it took."""
        started = time.monotonic()
        try:
            session.get(self.server.url(path))
        except requests.Timeout as exc:
            elapsed = time.monotonic() - started
            self.result(f"{type(exc).__name__} after {elapsed:.1f} s for "
                        f"{len(_starts(exc))} attempts ({note})")

    # -- the scenarios -----------------------------------------------------------------

    def run(self) -> None:
        """Every scenario, in order, then the statistics table."""
        self.success()
        self.reset_then_success()
        self.server_error_then_success()
        self.rate_limited_with_retry_after()
        self.retry_after_above_the_cap()
        self.not_found_is_not_retried()
        self.ids_in_paths_make_one_name()
        self.urllib3_retry_decides()
        self.slow_drip_cut_by_deadline()
        self.whole_call_deadline()
        self.post_is_not_resent()
        self.generator_body_is_not_resent()
        self.callable_api_keeps_the_verdict()
        self.budget_refunds_transient_failures()
        self.breaker_opens_and_recovers()
        self.operator_steers_the_breaker()
        self.payment_signature_checked()
        self.waiting_for_a_task()
        self.asyncio_client()
        self.throttle_paces_a_burst()
        self.statistics()

    def success(self) -> None:
        self.heading("Success: one attempt, nothing to retry")
        session = self.session("demo-success")
        response = session.get(self.server.url("/ok"))
        self.result(f"HTTP {response.status_code}, server saw {self.server.hits('/ok')} request")
        self.say("   (the demo shows DEBUG: at INFO a call whose first attempt succeeds writes "
                 "nothing)")

    def reset_then_success(self) -> None:
        self.heading("Connection reset -> retry -> success")
        session = self.session("demo-reset")
        response = session.get(self.server.url("/seq/reset?steps=reset,ok"))
        self.result(f"HTTP {response.status_code} after "
                    f"{self.server.hits('/seq/reset')} attempts (the first was reset)")

    def server_error_then_success(self) -> None:
        self.heading("503 Service Unavailable -> retry -> success")
        session = self.session("demo-503")
        response = session.get(self.server.url("/seq/unavailable?steps=503,ok"))
        self.result(f"HTTP {response.status_code} after "
                    f"{self.server.hits('/seq/unavailable')} attempts")

    def rate_limited_with_retry_after(self) -> None:
        self.heading("429 Too Many Requests with Retry-After: 1 -> waits what the server asked")
        session = self.session("demo-429", backoff_max=2.0)
        started = time.monotonic()
        response = session.get(self.server.url("/seq/limited?steps=429,ok&retry_after=1"))
        waited = time.monotonic() - started
        self.result(f"HTTP {response.status_code} after {waited:.1f} s "
                    f"(Retry-After 1 s honoured, not the {_DEMO_BACKOFF:g} s backoff)")

    def retry_after_above_the_cap(self) -> None:
        self.heading("503 with Retry-After: 3600 (above the 5 s cap): returned at once, "
                     "not slept through")
        session = self.session("demo-retry-after-long", backoff_max=5.0)
        before = self.server.hits("/status/503")
        started = time.monotonic()
        response = session.get(self.server.url("/status/503?retry_after=3600"))
        self.result(f"HTTP {response.status_code} after {time.monotonic() - started:.1f} s, "
                    f"server saw {self.server.hits('/status/503') - before} request")

    def not_found_is_not_retried(self) -> None:
        self.heading("404 Not Found: a client error, returned at once, never retried")
        session = self.session("demo-404")
        response = session.get(self.server.url("/status/404"))
        self.result(f"HTTP {response.status_code}, server saw "
                    f"{self.server.hits('/status/404')} request")

    def slow_drip_cut_by_deadline(self) -> None:
        self.heading("Slow drip (1 byte / 0.2 s for 10 s) with timeout=1.0: "
                     "each attempt is cut at 1 s")
        session = self.session("demo-drip", max_retries=1, timeout=1.0)
        self.timed_out(session, "/drip?interval=0.2&count=50",
                       "plain requests' timeout=1 would wait 10 s: every byte arrives "
                       "within the read timeout")

    def whole_call_deadline(self) -> None:
        self.heading("A server that never answers, timeout=1.0 and deadline=1.5: "
                     "the whole call ends at 1.5 s")
        session = self.session("demo-deadline", max_retries=3, timeout=1.0, deadline=1.5)
        self.timed_out(session, "/hang?seconds=5", "the second cut at the deadline; without "
                       "deadline= 4 attempts and 3 waits take 5.4 s")

    def ids_in_paths_make_one_name(self) -> None:
        self.heading("No operation_name: ids in the path read {id}, one name per endpoint")
        adapter = SmartRetryAdapter(max_retries=1, backoff_base=_DEMO_BACKOFF, lang=self.lang,
                                    stats=self.stats)
        session = requests.Session()
        session.mount("http://", adapter)
        for task in ("cgt-20261201-0001", "cgt-20261201-0002"):
            session.get(self.server.url(f"/seq/tasks/{task}?steps=503,ok"))
        names = [name for name in self.stats.snapshot() if "/seq/tasks/" in name]
        self.result(f"2 task ids, {len(names)} operation: {names[0]}")

    def urllib3_retry_decides(self) -> None:
        self.heading("A urllib3 Retry decides exactly as in HTTPAdapter (RetryError included)")
        retry = Retry(total=2, status_forcelist=[503], backoff_factor=0.1)
        adapter = SmartRetryAdapter(max_retries=retry, operation_name="demo-urllib3-retry",
                                    lang=self.lang, stats=self.stats)
        session = requests.Session()
        session.mount("http://", adapter)
        before = self.server.hits("/status/503")
        try:
            session.get(self.server.url("/status/503"))
        except requests.exceptions.RetryError as exc:
            self.result(f"{type(exc).__name__} after "
                        f"{self.server.hits('/status/503') - before} requests, as plain "
                        f"HTTPAdapter(max_retries=Retry(total=2, ...)) raises it")

    def post_is_not_resent(self) -> None:
        self.heading("POST reset after it was sent: not resent (the server may have acted)")
        session = self.session("demo-post")
        try:
            session.post(self.server.url("/reset"), json={"order": 42})
        except requests.ConnectionError as exc:
            self.result(f"{type(exc).__name__} raised, server saw "
                        f"{self.server.hits('/reset')} POST")
        self.say("   The same POST with an Idempotency-Key header is safe to resend:")
        keyed = self.session("demo-post-idempotent")
        response = keyed.post(self.server.url("/seq/keyed?steps=reset,ok"), json={"order": 42},
                              headers={"Idempotency-Key": "order-42"})
        self.result(f"HTTP {response.status_code} after "
                    f"{self.server.hits('/seq/keyed')} attempts")

    def budget_refunds_transient_failures(self) -> None:
        self.heading("Retry budget: transient failures cost it nothing, an outage drains it")
        budget = RetryBudget()  # the default every adapter gets
        quiet = {"log": False, "backoff_base": 0.01, "budget": budget, "max_retries": 1}
        storm = self.session("demo-budget-storm", **quiet)
        codes = [storm.get(self.server.url(f"/seq/storm{n}?steps=503,ok")).status_code
                 for n in range(30)]
        service = f"http://127.0.0.1:{self.server.port}"
        self.result(f"30 calls, each failing once: {codes.count(200)} x HTTP 200; every "
                    f"retry succeeded and was refunded ({budget.tokens(service):.0f} of 20 "
                    f"tokens left)")
        double = self.session("demo-budget-double", **{**quiet, "max_retries": 2},
                              pool_maxsize=16)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            doubles = list(pool.map(lambda n: double.get(self.server.url(
                f"/seq/double{n}?steps=503,503,ok")).status_code, range(48)))
        self.result(f"16 threads, 48 calls each failing twice (max_retries=2): "
                    f"{doubles.count(200)} x HTTP 200; a call holds one token while it "
                    f"retries, whatever its max_retries")
        outage = self.session("demo-budget-outage", **quiet)
        before = self.server.hits()
        for _ in range(60):
            outage.get(self.server.url("/status/503"))
        self.result(f"60 calls to a service that is down: {self.server.hits() - before} "
                    f"requests, not 120 (failed retries are not refunded; the budget "
                    f"stops them once its 20 tokens are spent)")

    def generator_body_is_not_resent(self) -> None:
        self.heading("PUT with a generator body, reset after sending: a body that cannot be "
                     "replayed is never resent")
        session = self.session("demo-generator")
        before = self.server.hits("/reset")
        try:
            session.put(self.server.url("/reset"), data=iter([b"x" * 1000, b"y" * 1000]))
        except requests.ConnectionError as exc:
            self.result(f"{type(exc).__name__} raised, server saw "
                        f"{self.server.hits('/reset') - before} PUT")

    def callable_api_keeps_the_verdict(self) -> None:
        self.heading("The callable API around that POST: the session's 'unsafe' is final")

        session = self.session("demo-post-wrapped", max_retries=0)
        before = self.server.hits("/reset")
        try:
            execute_with_retry(lambda: session.post(self.server.url("/reset"), json={"order": 7}),
                               max_retries=2, backoff_base=_DEMO_BACKOFF, lang=self.lang,
                               operation_name="demo-wrapped")
        except requests.ConnectionError as exc:
            self.result(f"{type(exc).__name__} raised, server saw "
                        f"{self.server.hits('/reset') - before} POST (execute_with_retry "
                        f"retries any exception, but not what the session refused to resend)")

    def breaker_opens_and_recovers(self) -> None:
        self.heading("Circuit breaker: opens after 3 failures, refuses, then recovers")
        breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=1.0)
        session = self.session("demo-breaker", max_retries=0, breaker=breaker)
        for _ in range(3):
            session.get(self.server.url("/status/500"))
        before = self.server.hits()
        try:
            session.get(self.server.url("/ok"))
            self.result("the breaker did not open (unexpected)")
        except CircuitOpenError as exc:
            self.result(f"CircuitOpenError: refused without touching the network "
                        f"(server requests {before} -> {self.server.hits()}), "
                        f"next probe in {exc.retry_in:.1f} s")
        time.sleep(1.1)
        response = session.get(self.server.url("/ok"))
        self.result(f"after the recovery timeout the probe succeeds: HTTP "
                    f"{response.status_code}; the breaker is closed again")

    def operator_steers_the_breaker(self) -> None:
        self.heading("Operator: force_open during a vendor incident, reset after; "
                     "a listener sees each change")
        changes: list[str] = []
        breaker = CircuitBreaker(listeners=[
            lambda service, old, new: changes.append(f"{old} -> {new}")])
        session = self.session("demo-operator", max_retries=0, breaker=breaker)
        service = f"http://127.0.0.1:{self.server.port}"
        breaker.force_open(service)  # with state="redis://…": every process of the fleet
        before = self.server.hits()
        try:
            session.get(self.server.url("/ok"))
            self.result("the forced-open breaker let a call through (unexpected)")
        except CircuitOpenError:
            self.result(f"state {breaker.state(service)}: refused without touching the "
                        f"network (server requests {before} -> {self.server.hits()})")
        breaker.reset(service)
        response = session.get(self.server.url("/ok"))
        self.result(f"after reset: HTTP {response.status_code}; listener saw "
                    f"{', '.join(changes)}")

    def payment_signature_checked(self) -> None:
        self.heading("WeChat Pay: a platform-signed answer is accepted, a forged one refused")
        try:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import rsa
            from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
            from cryptography.hazmat.primitives.hashes import SHA256
        except ImportError:
            self.result("skipped: needs the 'wechatpay' extra (cryptography)")
            return
        from .errors import ResponseSignatureError
        from .presets.wechatpay import payment_session

        merchant, platform = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                              for _ in range(2))
        key_id, path = "PUB_KEY_ID_0114232134912410000000000000", "/v3/pay/transactions/jsapi"
        forged: list[bool] = []  # set: the "network" edits the signed answer

        def wechat_pay(server: FaultServer, sock: Any, request: Any) -> None:
            # Plays WeChat Pay: signs its answer with the platform key; a forger then edits it.
            body = b'{"prepay_id": "wx-demo-0001"}'
            stamp, nonce = str(int(time.time())), "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
            signature = platform.sign(f"{stamp}\n{nonce}\n".encode() + body + b"\n",
                                      PKCS1v15(), SHA256())
            if forged:
                body = b'{"prepay_id": "wx-FORGED-666"}'
            server.send(sock, 200, body, {
                "Content-Type": "application/json", "Wechatpay-Timestamp": stamp,
                "Wechatpay-Nonce": nonce, "Wechatpay-Serial": key_id,
                "Wechatpay-Signature": base64.b64encode(signature).decode()})

        self.server.handlers[path] = wechat_pay
        session = payment_session(
            "1900000001", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
            merchant.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()),
            endpoint=self.server.url(""), backup_endpoint=None, operation_name="demo-payment",
            platform_public_key=platform.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            platform_public_key_id=key_id, lang=self.lang, stats=self.stats,
            max_retries=2, backoff_base=_DEMO_BACKOFF)
        order = {"out_trade_no": "ORDER-DEMO-1", "amount": {"total": 990}}
        response = session.post(path, json=order)
        self.result(f"HTTP {response.status_code}, prepay_id {response.json()['prepay_id']}: "
                    f"the signature verifies with the platform key")
        forged.append(True)
        before = self.server.hits(path)
        try:
            session.post(path, json=order)
            self.result("the forged answer was accepted (unexpected)")
        except ResponseSignatureError as exc:
            self.result(f"{type(exc).__name__} ({exc.check} check) after "
                        f"{self.server.hits(path) - before} request, not retried: the forged "
                        f"prepay_id never reaches your code")

    def waiting_for_a_task(self) -> None:
        self.heading("Waiting for a task: submit, then poll until done (one poll answers 503 "
                     "on the way)")
        from .presets import ark

        self.server.task_steps = ["queued", "running", "503", "running", "succeeded"]
        video = ark.video_session("demo-key", endpoint=self.server.url("/api/v3"),
                                  stats=self.stats, lang=self.lang, max_retries=2,
                                  backoff_base=_DEMO_BACKOFF)
        created: list[str] = []
        started = time.monotonic()
        done = ark.create_and_wait(video, {"model": "demo", "content": []},
                                   on_created=created.append, deadline=10.0, interval=0.2,
                                   interval_max=0.5, backoff_base=_DEMO_BACKOFF,
                                   lang=self.lang)
        polls = sum(1 for r in self.server.received() if r.method == "GET"
                    and r.route.endswith(f"/tasks/{created[0]}"))
        self.result(f"task {done['id']} {done['status']} after {polls} GETs in "
                    f"{time.monotonic() - started:.1f} s: 'queued' and 'running' were no "
                    f"failures (no WARNING), the 503 was retried; a crashed worker resumes "
                    f"with ark.wait_for_task(video, {created[0]!r})")

    def asyncio_client(self) -> None:
        self.heading("asyncio: the same policy on httpx.AsyncClient (a 503 retried after an "
                     "asyncio.sleep; a call cancelled in its wait gives up 'cancelled')")
        try:
            from .httpx import smart_async_client
        except ImportError:  # the httpx extra is optional
            self.result("skipped: pip install \"requests-smartretry[httpx]\"")
            return
        import asyncio

        async def calls() -> tuple[int, str]:
            async with smart_async_client(operation_name="demo-async", lang=self.lang,
                                          stats=self.stats,
                                          backoff_base=_DEMO_BACKOFF) as client:
                response = await client.get(self.server.url("/seq/async?steps=503,ok"))
                slow = asyncio.ensure_future(client.get(
                    self.server.url("/seq/async-cancel?steps=503,ok")))
                await asyncio.sleep(0.1)  # its first attempt failed; it waits to retry
                slow.cancel()
                try:
                    await slow
                    reason = "not cancelled"
                except asyncio.CancelledError as exc:
                    give_up = [e for e in attempt_history(exc)
                               if e.kind is EventKind.GIVE_UP]
                    reason = (give_up[0].give_up_reason if give_up else None) or "?"
                return response.status_code, reason

        status, reason = asyncio.run(calls())
        self.result(f"HTTP {status} after {self.server.hits('/seq/async')} requests; the "
                    f"cancelled call gave up with reason {reason!r} after "
                    f"{self.server.hits('/seq/async-cancel')} request (no retry sent)")

    def throttle_paces_a_burst(self) -> None:
        self.heading("Throttle: a burst of 12 calls against a vendor that allows 6 per second")
        import threading

        from .faultserver import RecordedRequest
        from .throttle import Throttle

        answered: list[float] = []  # when the vendor executed a request (monotonic)
        lock = threading.Lock()

        def limited(server: FaultServer, sock: Any, request: RecordedRequest) -> None:
            now = time.monotonic()
            with lock:
                busy = sum(1 for t in answered if now - t < 1.0) >= 6
                if not busy:
                    answered.append(now)
            if busy:
                server.send(sock, 429, b'{"code": 50429, "message": "QPS limit"}',
                            {"Content-Type": "application/json"})
            else:
                server.send(sock, 200, b'{"code": 10000}', {"Content-Type": "application/json"})

        self.server.handlers["/vendor/"] = limited

        def burst(session: requests.Session, path: str) -> list[int]:
            codes: list[int] = []

            def call() -> None:
                code = session.get(self.server.url(path)).status_code
                with lock:
                    codes.append(code)

            workers = [threading.Thread(target=call) for _ in range(12)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            return codes

        plain = self.session("demo-burst", max_retries=0, log=False)
        codes = burst(plain, "/vendor/plain")
        self.result(f"without a throttle: {codes.count(200)} x HTTP 200, {codes.count(429)} x "
                    f"HTTP 429 (the vendor throttled them)")
        time.sleep(1.0)  # the vendor's window empties
        # Paced a little under the vendor's quota: its window and our clock are not one.
        # (A turn that cannot come within the attempt's timeout would raise ThrottledError.)
        paced = self.session("demo-throttled", max_retries=0, timeout=5.0,
                             throttle=Throttle(rate=5.0, burst=1))
        started = time.monotonic()
        codes = burst(paced, "/vendor/paced")
        self.result(f"with Throttle(rate=5, burst=1): {codes.count(200)} x HTTP 200, "
                    f"{codes.count(429)} x HTTP 429 in {time.monotonic() - started:.1f} s: "
                    f"each call waited for its turn (the lines above), none was throttled")
        time.sleep(1.0)
        # No rate given: an adaptive throttle starts slowly (10/s, doubling every second)
        # and learns the vendor's rate from its first throttling answer.
        adaptive = Throttle(adaptive=True)
        learning = self.session("demo-adaptive", max_retries=1, timeout=5.0, log=False,
                                throttle=adaptive)
        started = time.monotonic()
        codes = burst(learning, "/vendor/adaptive")
        elapsed = time.monotonic() - started
        url = self.server.url("/vendor/adaptive")
        service = learning.get_adapter(url).service_for(
            requests.Request("GET", url).prepare())
        throttled = self.server.hits("/vendor/adaptive") - len(codes)
        self.result(f"with Throttle(adaptive=True), no rate: {codes.count(200)} x HTTP 200 in "
                    f"{elapsed:.1f} s; a slow start (10/s, doubling every second) sent the "
                    f"first calls, {throttled} throttled answer(s) were retried, and the rate "
                    f"learned from them is {adaptive.rate(service):.1f}/s")

    def statistics(self) -> None:
        self.say("\nStatistics per operation (stats_of(session).snapshot()): one call is "
                 "one request; its attempts include the retries")
        self.say(format_stats_table(self.stats.snapshot()))


def _starts(exc: BaseException) -> list[AttemptEvent]:
    return [e for e in attempt_history(exc) if e.kind is EventKind.START]


def run_demo(lang: Literal["zh", "en"] = "zh", out: Optional[TextIO] = None) -> int:
    """Run the tour, printing to ``out`` (stdout); returns the process exit code (0)."""
    out = out if out is not None else sys.stdout
    started = time.monotonic()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("     %(message)s"))
    saved = (_logger.level, _logger.propagate)
    # The demo, and only the demo, shows the library's log lines on its own output.
    _logger.addHandler(handler)
    _logger.setLevel(logging.DEBUG)  # the tour shows a quiet (DEBUG) success's lines too
    _logger.propagate = False
    try:
        with FaultServer() as server:
            print(f"requests-smartretry demo: a fault server on {server.url('/')}",
                  file=out, flush=True)
            Tour(server, out=out, lang=lang).run()
    finally:
        _logger.removeHandler(handler)
        _logger.setLevel(saved[0])
        _logger.propagate = saved[1]
    print(f"\nDone in {time.monotonic() - started:.1f} s.", file=out, flush=True)
    return 0
