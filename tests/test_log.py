"""The logging hook: the seed's wording, levels and structured fields."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from requests_smartretry import AttemptEvent, EventKind, LoggingHook, Verdict, smart_session
from requests_smartretry.faultserver import FaultServer
from requests_smartretry.log import describe_failure

from .conftest import LineCollector


def event(kind: EventKind, **fields: object) -> AttemptEvent:
    """An event of a two-attempt call named 生成艺术照."""
    base: dict[str, object] = {"operation": "生成艺术照", "service": "https://h", "attempt": 1,
                               "max_attempts": 2, "call_id": 7}
    base.update(fields)
    return AttemptEvent(kind=kind, **base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("verdict", "reason", "zh", "en"),
    [
        (Verdict.TIMEOUT, "deadline", "网络连接超时", "network timeout"),
        (Verdict.NETWORK, "ECONNREFUSED", "连接被拒绝 (ECONNREFUSED)",
         "connection refused (ECONNREFUSED)"),
        (Verdict.NETWORK, "ENOTFOUND", "域名解析失败 (ENOTFOUND)", "DNS lookup failed (ENOTFOUND)"),
        (Verdict.SERVER_ERROR, "HTTP 503", "服务器错误 (HTTP 503)", "server error (HTTP 503)"),
        (Verdict.RATE_LIMIT, "HTTP 429", "请求过于频繁 (HTTP 429)", "rate limited (HTTP 429)"),
        (Verdict.CLIENT_ERROR, "HTTP 404", "客户端错误 (HTTP 404)", "client error (HTTP 404)"),
    ],
)
def test_failure_reasons_read_naturally(verdict: Verdict, reason: str, zh: str, en: str) -> None:
    """Each verdict has a short human text in both languages, with its code."""
    assert describe_failure(verdict, reason, "zh") == zh
    assert describe_failure(verdict, reason, "en") == en


def test_levels_and_structured_fields(log_lines: LineCollector) -> None:
    """Failures log at WARNING, give-ups at ERROR, with retry_* extra fields for JSON logs."""
    hook = LoggingHook()
    hook(event(EventKind.FAILURE, verdict=Verdict.SERVER_ERROR, reason="HTTP 500",
               status_code=500, elapsed=0.25))
    hook(event(EventKind.GIVE_UP, attempt=2, verdict=Verdict.SERVER_ERROR, reason="HTTP 500",
               give_up_reason="exhausted"))
    attempt, failure, give_up = log_lines.records  # the held-back first-attempt line first
    assert attempt.levelno == logging.INFO
    assert failure.levelno == logging.WARNING and give_up.levelno == logging.ERROR
    assert failure.retry_operation == "生成艺术照"  # type: ignore[attr-defined]
    assert failure.retry_status_code == 500  # type: ignore[attr-defined]
    assert failure.retry_verdict == "server_error"  # type: ignore[attr-defined]
    assert give_up.getMessage() == "[API重试] 生成艺术照 - 已达最大尝试次数 (2 次), 放弃"


def test_breaker_rejection_line(log_lines: LineCollector) -> None:
    """A refused call says the breaker is open and when the next probe goes."""
    LoggingHook(lang="en")(event(EventKind.REJECTED, wait=1.5))
    assert log_lines.lines == [
        "[API retry] 生成艺术照 - circuit breaker open, request refused (next probe in 1500ms)"
    ]


def test_unknown_language_is_refused() -> None:
    """LoggingHook(lang=...) accepts only zh and en."""
    with pytest.raises(ValueError, match="lang"):
        LoggingHook(lang="de")


def test_nothing_is_formatted_when_the_logger_is_off(log_lines: LineCollector) -> None:
    """A disabled level costs nothing and writes nothing."""
    logging.getLogger("requests_smartretry").setLevel(logging.CRITICAL)
    LoggingHook()(event(EventKind.START))
    assert log_lines.lines == []


def test_retry_after_refusal_names_the_cap_in_force(log_lines: LineCollector) -> None:
    """The refusal line quotes the cap the engine applied (a per-verdict rule's, if any)."""
    LoggingHook(lang="en", backoff_max=5.0)(
        event(EventKind.GIVE_UP, verdict=Verdict.RATE_LIMIT, retry_after=60.0,
              give_up_reason="retry_after_too_long", backoff_cap=30.0))
    assert log_lines.lines == ["[API retry] 生成艺术照 - server asked to wait 60000ms, "
                               "above the 30000ms cap; not retrying"]


@pytest.mark.parametrize(("lang", "expected"), [
    ("en", "[API retry] 生成艺术照 - request may have reached the server and the call is not "
           "idempotent; not retrying"),
    ("zh", "[API重试] 生成艺术照 - 请求可能已送达服务器且该调用非幂等, 不重试"),
])
def test_unsafe_give_up_without_a_method_reads_whole(
    log_lines: LineCollector, lang: str, expected: str
) -> None:
    """A callable-API call (no HTTP method) that is unsafe to repeat still names what it is."""
    LoggingHook(lang=lang)(event(EventKind.GIVE_UP, verdict=Verdict.NETWORK,
                                 reason="ECONNRESET", give_up_reason="unsafe"))
    assert expected in log_lines.lines


def test_unsafe_give_up_with_a_method_spaces_only_the_latin_name(
    log_lines: LineCollector,
) -> None:
    """zh: "且 POST 非幂等" (a Latin word set off by spaces), never "且 该调用 非幂等"."""
    LoggingHook(lang="zh")(event(EventKind.GIVE_UP, verdict=Verdict.NETWORK, method="POST",
                                 reason="ECONNRESET", give_up_reason="unsafe"))
    assert "[API重试] 生成艺术照 - 请求可能已送达服务器且 POST 非幂等, 不重试" in log_lines.lines


def test_a_line_only_null_handlers_would_get_is_not_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A line every handler on its way would discard (NullHandlers only, no filter, the
    standard record factory) is neither formatted nor built; with any other handler, a
    filter or a record factory of the application's, it is built as before."""
    built: list[str] = []
    emit = LoggingHook._emit  # counted here: a wrapped Logger method would see the record

    def counting(self: LoggingHook, *args: Any, **kwargs: Any) -> None:
        built.append(args[2])
        emit(self, *args, **kwargs)

    monkeypatch.setattr(LoggingHook, "_emit", counting)
    quiet = logging.getLogger("requests_smartretry.tests.discarded")
    quiet.propagate = False  # pytest's own handlers sit on the root logger
    quiet.setLevel(logging.INFO)
    quiet.addHandler(logging.NullHandler())
    hook = LoggingHook(logger=quiet)
    failure = event(EventKind.FAILURE, verdict=Verdict.SERVER_ERROR, reason="HTTP 503")
    hook(failure)
    assert built == []

    class Seen(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return True

    seen = Seen()
    quiet.addFilter(seen)
    hook(failure)
    quiet.removeFilter(seen)
    assert len(built) == 2  # the held-back first attempt's line, and the failure's
    factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(lambda *args, **kwargs: factory(*args, **kwargs))
    try:
        hook(failure)
    finally:
        logging.setLogRecordFactory(factory)
    assert len(built) == 4
    collector = LineCollector()
    quiet.addHandler(collector)
    try:
        hook(failure)
    finally:
        quiet.removeHandler(collector)
    assert len(built) == 6 and len(collector.lines) == 2
    hook(failure)
    assert len(built) == 6
    quiet.handlers.clear()
    quiet.propagate = True


@pytest.mark.parametrize("patched", ["Logger.callHandlers", "logger.handle"])
def test_a_record_an_sdk_observes_is_built_though_only_null_handlers_would_get_it(
        patched: str, server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sentry's LoggingIntegration wraps ``logging.Logger.callHandlers`` and turns every
    WARNING/ERROR record into a breadcrumb or an event, whatever the handlers; a test may
    spy on the package logger's ``handle``.  An application that configured no handler
    (the package's NullHandler only) had its retry lines seen there: they must still be."""
    seen: list[str] = []
    package = logging.getLogger("requests_smartretry")
    if patched == "Logger.callHandlers":
        call_handlers = logging.Logger.callHandlers

        def sentry_like(self: logging.Logger, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())
            call_handlers(self, record)

        monkeypatch.setattr(logging.Logger, "callHandlers", sentry_like)
    else:
        handle = package.handle

        def spy(record: logging.LogRecord) -> None:
            seen.append(record.getMessage())
            handle(record)

        monkeypatch.setattr(package, "handle", spy)
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # pytest's capture handlers: a bare application's root
    try:
        session = smart_session(max_retries=1, sleep=lambda seconds: None,
                                operation_name="生成艺术照")
        session.get(server.url("/status/503"))
    finally:
        root.handlers[:] = saved
    assert [line for line in seen if "第 1 次尝试失败" in line], seen
