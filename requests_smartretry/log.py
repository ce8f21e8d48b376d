"""The logging hook: the seed's log lines, one per step, through stdlib ``logging``.

::

    [API重试] 生成艺术照 - 第 1 次尝试 (最多 2 次)
    [API重试] 生成艺术照 - 第 1 次尝试失败: 网络连接超时
    [API重试] 生成艺术照 - 准备重试 (剩余 1 次机会)
    [API重试] 生成艺术照 - 等待 1000ms 后重试
    [API重试] 生成艺术照 - 第 2 次尝试 (最多 2 次)
    [API重试] 生成艺术照 - 第 2 次尝试成功

A call whose first attempt succeeds writes its two lines at DEBUG only; any other call
writes the whole sequence at INFO and up (the first line held back until the first
attempt's outcome is known).  One record per decision, each with its own ``retry_event``
(:data:`RECORD_NAMES`), and structured ``extra`` fields (``retry_operation``,
``retry_attempt``, ``retry_verdict``… docs/observability.md lists them with their types) for JSON
pipelines.  No URL query, header or exception text reaches a line: only the operation
name and the classification's reason code (and ``retry_url``, redacted).
"""

from __future__ import annotations

import logging
import operator
from typing import Any, Optional

from .events import AttemptEvent, EventKind, Verdict

__all__ = ["RECORD_NAMES", "WAIT_RECORD_NAMES", "LoggingHook", "describe_failure",
           "log_wait", "logger"]

logger = logging.getLogger("requests_smartretry")
logger.addHandler(logging.NullHandler())

_TEXT = {
    "zh": {
        "prefix": "[API重试]",
        "start": "第 {attempt} 次尝试 (最多 {max_attempts} 次)",
        "success": "第 {attempt} 次尝试成功",
        "failure": "第 {attempt} 次尝试失败: {reason}",
        "retry": "准备重试 (剩余 {left} 次机会)",
        "wait": "等待 {ms}ms 后重试",
        "rejected": "熔断器已打开, 请求被拒绝 ({ms}ms 后允许探测)",
        "rejected_forced": "熔断器已被手动打开, 请求被拒绝 (恢复前不探测)",
        "exhausted": "已达最大尝试次数 ({max_attempts} 次), 放弃",
        "retry_exhausted": "urllib3 Retry 的重试次数已用尽, 放弃",
        "verdict_limit": "此类错误的重试次数已用尽, 放弃",
        "not_retryable": "错误不可重试, 放弃",
        "unsafe": "请求可能已送达服务器且{method}非幂等, 不重试",
        # A Latin method name is set off by spaces ("且 POST 非幂等"); Chinese text is not.
        "method": " {method} ",
        "any_method": "该调用",
        "not_replayable": "请求体无法重放 (生成器或不可回退的流), 不重试",
        "retry_after_too_long": "服务器要求等待 {ms}ms, 超过上限 {cap_ms}ms, 不重试",
        "budget": "重试预算已用尽, 不重试",
        "deadline": "剩余时间不足以等待重试, 放弃",
        "circuit_open": "熔断器已打开, 不重试",
        "error": "尝试过程中出现异常 ({reason}), 放弃",
        "interrupted": "等待重试时被中断, 放弃",
        "cancelled": "调用被取消 (asyncio 任务取消), 放弃",
        "closed": "会话已关闭 (session.close()), 不重试",
        "throttled": "限流: 重试无法及时获得发送机会, 放弃",
        "throttle_waited": "限流: 第 {attempt} 次尝试等待 {ms}ms 后发送",
        "throttle_refused": "限流: 第 {attempt} 次尝试无法在时限内获得发送机会 ({need}), 未发送",
        "throttle_need_wait": "需等待 {ms}ms",
        "throttle_need_slot": "并发已满",
        "poll_wait": "等待任务完成 (第 {polls} 次查询{state}, 已等待 {elapsed_ms}ms), "
        "{ms}ms 后再次查询",
        "poll_done": "任务完成 (共 {polls} 次查询, 用时 {elapsed_ms}ms)",
        "poll_failed": "任务未成功{state}: {reason} (第 {polls} 次查询), 停止等待",
        "poll_error": "查询失败 ({reason}), 停止等待 (第 {polls} 次查询)",
        "poll_deadline": "等待任务超时 ({deadline_ms}ms 内查询 {polls} 次{state}), 放弃",
        "poll_state": ", 状态 {state}",
    },
    "en": {
        "prefix": "[API retry]",
        "start": "attempt {attempt} (of at most {max_attempts})",
        "success": "attempt {attempt} succeeded",
        "failure": "attempt {attempt} failed: {reason}",
        "retry": "retrying ({left} left)",
        "wait": "waiting {ms}ms before retrying",
        "rejected": "circuit breaker open, request refused (next probe in {ms}ms)",
        "rejected_forced": "circuit breaker forced open by an operator, request refused "
        "(no probe until it is reset)",
        "exhausted": "all {max_attempts} attempts failed, giving up",
        "retry_exhausted": "the urllib3 Retry has no retries left; giving up",
        "verdict_limit": "no retries left for this kind of failure, giving up",
        "not_retryable": "error is not retryable, giving up",
        "unsafe": "request may have reached the server and {method} is not idempotent; "
        "not retrying",
        "method": "{method}",
        "any_method": "the call",
        "not_replayable": "request body cannot be replayed (generator or unseekable stream); "
        "not retrying",
        "retry_after_too_long": "server asked to wait {ms}ms, above the {cap_ms}ms cap; "
        "not retrying",
        "budget": "retry budget spent; not retrying",
        "deadline": "no time left for another attempt; giving up",
        "circuit_open": "circuit breaker open; not retrying",
        "error": "the attempt raised {reason}; giving up",
        "interrupted": "interrupted while waiting to retry; giving up",
        "cancelled": "the call was cancelled (asyncio task cancelled); giving up",
        "closed": "session closed (session.close()); not retrying",
        "throttled": "throttled: the retry cannot get its turn in time; giving up",
        "throttle_waited": "throttled: attempt {attempt} waited {ms}ms for its turn",
        "throttle_refused": "throttled: attempt {attempt} cannot get its turn in time ({need}); "
        "not sent",
        "throttle_need_wait": "needs {ms}ms",
        "throttle_need_slot": "no in-flight slot free",
        "poll_wait": "waiting for the task (poll {polls}{state}, {elapsed_ms}ms so far); "
        "next poll in {ms}ms",
        "poll_done": "task done after {polls} poll(s) in {elapsed_ms}ms",
        "poll_failed": "task did not succeed{state}: {reason} (poll {polls}); stopped waiting",
        "poll_error": "poll failed ({reason}); stopped waiting (poll {polls})",
        "poll_deadline": "task not done within {deadline_ms}ms ({polls} polls{state}); "
        "giving up",
        "poll_state": ", status {state}",
    },
}

_VERDICT_TEXT = {
    "zh": {
        Verdict.TIMEOUT: "网络连接超时",
        Verdict.NETWORK: "网络错误",
        Verdict.SERVER_ERROR: "服务器错误",
        Verdict.RATE_LIMIT: "请求过于频繁",
        Verdict.CLIENT_ERROR: "客户端错误",
        Verdict.BUSINESS: "业务错误",
        Verdict.PERMANENT: "不可重试的错误",
        Verdict.ERROR: "错误",
    },
    "en": {
        Verdict.TIMEOUT: "network timeout",
        Verdict.NETWORK: "network error",
        Verdict.SERVER_ERROR: "server error",
        Verdict.RATE_LIMIT: "rate limited",
        Verdict.CLIENT_ERROR: "client error",
        Verdict.BUSINESS: "business error",
        Verdict.PERMANENT: "permanent error",
        Verdict.ERROR: "error",
    },
}

_NETWORK_TEXT = {
    "zh": {
        "ECONNREFUSED": "连接被拒绝",
        "ECONNRESET": "连接被重置",
        "ENOTFOUND": "域名解析失败",
        "ETIMEDOUT": "网络连接超时",
        "EHOSTUNREACH": "网络不可达",
    },
    "en": {
        "ECONNREFUSED": "connection refused",
        "ECONNRESET": "connection reset",
        "ENOTFOUND": "DNS lookup failed",
        "ETIMEDOUT": "connect timeout",
        "EHOSTUNREACH": "network unreachable",
    },
}

# Timeouts print as the seed did, with no code after them.
_PLAIN_TIMEOUT_REASONS = frozenset({"deadline", "read_timeout", "timeout (message)"})


def describe_failure(verdict: Optional[Verdict], reason: Optional[str], lang: str) -> str:
    """The human text for a failed attempt: ``网络连接超时``, ``连接被拒绝 (ECONNREFUSED)``,
    ``服务器错误 (HTTP 503)``…"""
    lang = lang if lang in _TEXT else "zh"
    if verdict is None:
        return reason or ""
    if verdict is Verdict.TIMEOUT and (reason is None or reason in _PLAIN_TIMEOUT_REASONS):
        return _VERDICT_TEXT[lang][Verdict.TIMEOUT]
    base = _NETWORK_TEXT[lang].get(reason or "") or _VERDICT_TEXT[lang].get(verdict, "")
    return f"{base} ({reason})" if reason else base


# The level each kind logs at when the call is not a first-attempt success (which logs at
# DEBUG); give-ups log "not retryable" at INFO and the rest at ERROR.
_LEVELS = {
    EventKind.START: logging.INFO,
    EventKind.SUCCESS: logging.INFO,
    EventKind.RETRY: logging.INFO,
    EventKind.GIVE_UP: logging.INFO,
    EventKind.FAILURE: logging.WARNING,
    EventKind.REJECTED: logging.WARNING,
    EventKind.THROTTLED: logging.INFO,
}
# Failures that say the caller's request was wrong (4xx, a business error), not that the
# service is unwell: INFO, not WARNING.
_QUIET_VERDICTS = frozenset({Verdict.CLIENT_ERROR, Verdict.BUSINESS})
_START = EventKind.START
_SUCCESS = EventKind.SUCCESS
_FAILURE = EventKind.FAILURE
_DEBUG = logging.DEBUG
_NULL_HANDLER = logging.NullHandler
_LOGGER_CLASS = logging.Logger
#: The Logger methods a line goes through (``log`` → ``_log`` → ``findCaller``,
#: ``makeRecord`` → ``handle`` → ``filter`` → ``callHandlers``).  An SDK may wrap one on the
#: class (Sentry's LoggingIntegration wraps ``callHandlers`` and sees every record, whatever
#: the handlers), a test on the logger (``mock.patch.object(logger, "handle")``): a line is
#: skipped only while all of them are logging's own.
_PATH_NAMES = ("log", "_log", "findCaller", "makeRecord", "handle", "filter", "callHandlers")
_path_of = operator.attrgetter(*_PATH_NAMES)
_STANDARD_PATH = _path_of(_LOGGER_CLASS)
_PATH_PATCHABLE = frozenset(_PATH_NAMES)
#: False if one of them was wrapped before this module was imported (sentry_sdk.init first).
_PATH_IS_LOGGINGS = all(
    getattr(getattr(method, "__code__", None), "co_filename", None)
    == logging.getLogger.__code__.co_filename for method in _STANDARD_PATH)


def _discarded(logger: logging.Logger) -> bool:
    """Whether a record that ``logger`` writes now would be built only to be thrown away:
    the standard logger and record factory, no filter on the way, and every handler it
    would reach a ``NullHandler`` (at least one: a record that reaches none goes to
    ``logging.lastResort``).  What an application that never configured logging has
    (this package installs a ``NullHandler``): its retried calls then skip formatting the
    line and building the record.  Read afresh for each line, as ``Logger.callHandlers``
    reads the handlers."""
    if logging.getLogRecordFactory() is not logging.LogRecord or not _PATH_IS_LOGGINGS:
        return False
    if (_path_of(logger.__class__) != _STANDARD_PATH
            or not _PATH_PATCHABLE.isdisjoint(logger.__dict__)):
        return False  # a wrapped method may see the record
    found = False
    current: Optional[logging.Logger] = logger
    while current is not None:
        if current.__class__ is not _LOGGER_CLASS and current is not logging.root:
            return False
        if current.filters:
            return False
        for handler in current.handlers:
            if handler.__class__ is not _NULL_HANDLER:
                return False
            found = True
        if not current.propagate:
            break
        current = current.parent
    return found


#: The ``retry_event`` of each line: one name per decision.
RECORD_NAMES = ("attempt", "failure", "retry", "wait", "success", "give_up", "rejected",
                "throttled")
_RECORD_NAME = {
    EventKind.START: "attempt",
    EventKind.SUCCESS: "success",
    EventKind.FAILURE: "failure",
    EventKind.RETRY: "retry",
    EventKind.GIVE_UP: "give_up",
    EventKind.REJECTED: "rejected",
    EventKind.THROTTLED: "throttled",
}


def _ms(seconds: Optional[float]) -> int:
    return round((seconds or 0.0) * 1000)


class LoggingHook:
    """Writes the seed's log lines for every attempt event.

    Example::

        session = smart_session(log=False, hooks=[LoggingHook(lang="en")])

    A call whose first attempt succeeds is quiet: its two lines go out at DEBUG.  Any other
    call writes the whole sequence at INFO and up; its first "第 1 次尝试" line is held back
    until the first attempt's outcome is known (it is written from that outcome's event,
    so holding it back stores nothing).  One record per decision, each with its own
    ``retry_event``: ``attempt``, ``failure``, ``retry``, ``wait``, ``success``,
    ``give_up`` (and ``rejected`` for the breaker).
    """

    def __init__(
        self,
        lang: str = "zh",
        *,
        backoff_max: Optional[float] = None,
        logger: logging.Logger = logger,
    ) -> None:
        if lang not in _TEXT:
            raise ValueError(f"lang must be 'zh' or 'en', got {lang!r}")
        self.lang = lang
        self.backoff_max = backoff_max
        self.logger = logger

    def __repr__(self) -> str:
        return f"LoggingHook(lang={self.lang!r})"

    def wants_success_lines(self) -> bool:
        """Whether a call whose first attempt succeeds gets lines (DEBUG is on): if not,
        the retry loop need not build that call's events for this hook."""
        return self.logger.isEnabledFor(_DEBUG)

    def __call__(self, event: AttemptEvent) -> None:
        """Write the line(s) for ``event``."""
        kind = event.kind
        if event.attempt == 1:
            # The first attempt's start is written with its outcome (nothing to hold: the
            # outcome's event says all the start line needs); a first-attempt success is
            # DEBUG only, and nothing is formatted unless DEBUG is on.
            if kind is _START:
                return
            if kind is _SUCCESS:
                if self.logger.isEnabledFor(_DEBUG) and not _discarded(self.logger):
                    self._first_attempt(_DEBUG, event)
                    self._line(_DEBUG, event, "success")
                return
        level = _LEVELS.get(kind, logging.ERROR)
        if kind is _FAILURE and event.verdict in _QUIET_VERDICTS:
            level = logging.INFO
        if not self.logger.isEnabledFor(level):
            return  # the common case in production: INFO is off, nothing to format
        if _discarded(self.logger):
            return  # logging never configured: the lines would reach NullHandlers only
        if kind is _START:
            self._line(logging.INFO, event, "start")
        elif kind is _SUCCESS:
            self._line(logging.INFO, event, "success")
        elif kind is _FAILURE:
            if event.attempt == 1:
                self._first_attempt(logging.INFO, event)
            reason = describe_failure(event.verdict, event.reason, self.lang)
            self._line(level, event, "failure", reason=reason)
        elif kind is EventKind.RETRY:
            self._line(logging.INFO, event, "retry")
            self._line(logging.INFO, event, "wait", record="wait")
        elif kind is EventKind.REJECTED:
            forced = getattr(event.error, "forced", False) is True
            self._line(logging.WARNING, event, "rejected_forced" if forced else "rejected",
                       record="rejected")
        elif kind is EventKind.THROTTLED:
            self._throttled(event)
        elif kind is EventKind.GIVE_UP:
            key = event.give_up_reason or "exhausted"
            template = key if key in _TEXT[self.lang] else "exhausted"
            # Not retryable, or cancelled by the caller (a client that went away): no error
            # of the service's.
            give_up_level = logging.INFO if key in ("not_retryable", "cancelled") \
                else logging.ERROR
            self._line(give_up_level, event, template, reason=event.reason or "")

    def _throttled(self, event: AttemptEvent) -> None:
        """A throttled wait (INFO), or a turn refused (WARNING): nothing was sent."""
        text = _TEXT[self.lang]
        if event.reason == "refused":
            need = text["throttle_need_slot"] if event.wait is None \
                else text["throttle_need_wait"].format(ms=_ms(event.wait))
            message = text["throttle_refused"].format(attempt=event.attempt, need=need)
            self._emit(logging.WARNING, event, message, "throttled")
        elif self.logger.isEnabledFor(logging.INFO):
            message = text["throttle_waited"].format(attempt=event.attempt, ms=_ms(event.wait))
            self._emit(logging.INFO, event, message, "throttled")

    def _first_attempt(self, level: int, outcome: AttemptEvent) -> None:
        """The held-back "第 1 次尝试" line, written from the first attempt's outcome."""
        if self.logger.isEnabledFor(level):
            self._line(level, outcome, "start", record="attempt", outcome=False)

    def _line(self, level: int, event: AttemptEvent, key: str, *, record: Optional[str] = None,
              outcome: bool = True, reason: str = "") -> None:
        if not self.logger.isEnabledFor(level):
            return
        text = _TEXT[self.lang]
        ms = event.retry_after if key == "retry_after_too_long" else event.wait
        message = text[key].format(
            attempt=event.attempt, max_attempts=event.max_attempts, left=event.retries_left,
            ms=_ms(ms), reason=reason,
            method=text["method"].format(method=event.method) if event.method
            else text["any_method"],
            cap_ms=_ms(event.backoff_cap if event.backoff_cap is not None
                       else self.backoff_max))
        self._emit(level, event, message, record or _RECORD_NAME[event.kind], outcome)

    def _emit(self, level: int, event: AttemptEvent, message: str, record: str,
              outcome: bool = True) -> None:
        prefix = _TEXT[self.lang]["prefix"]
        # ``outcome=False``: the attempt line written from its outcome's event carries
        # only what was known when the attempt started.
        extra: dict[str, Any] = {
            "retry_event": record,
            "retry_operation": event.operation,
            "retry_service": event.service,
            "retry_attempt": event.attempt,
            "retry_max_attempts": event.max_attempts,
            "retry_call_id": event.call_id,
            "retry_verdict": event.verdict.value if outcome and event.verdict else None,
            "retry_reason": event.reason if outcome else None,
            "retry_status_code": event.status_code if outcome else None,
            "retry_elapsed_s": event.elapsed if outcome else None,
            "retry_wait_s": event.wait if outcome else None,
            "retry_after_s": event.retry_after if outcome else None,
            "retry_give_up_reason": event.give_up_reason if outcome else None,
            "retry_method": event.method,
            "retry_url": event.url,
        }
        self.logger.log(level, "%s %s - %s", prefix, event.operation, message, extra=extra)


#: The ``retry_event`` of a wait's lines (:func:`~requests_smartretry.poll_until`).
WAIT_RECORD_NAMES = ("poll_wait", "poll_done", "poll_failed", "poll_error", "poll_deadline")


def log_wait(level: int, key: str, operation: str, *, lang: str, polls: int, elapsed: float,
             wait: Optional[float] = None, state: Optional[str] = None, reason: str = "",
             deadline: Optional[float] = None, target: logging.Logger = logger) -> None:
    """Write one line of a wait (``key``: one of :data:`WAIT_RECORD_NAMES`) in the seed's
    style, ``[API重试] 视频任务状态查询 - 等待任务完成 (第 3 次查询, 状态 running, …)``, with
    structured ``extra`` fields (``retry_event``, ``retry_operation``, ``retry_polls``,
    ``retry_elapsed_s``, ``retry_wait_s``, ``retry_task_status``)."""
    if not target.isEnabledFor(level):
        return
    text = _TEXT[lang if lang in _TEXT else "zh"]
    shown = text["poll_state"].format(state=state) if state else ""
    message = text[key].format(polls=polls, state=shown, elapsed_ms=_ms(elapsed), ms=_ms(wait),
                               reason=reason, deadline_ms=_ms(deadline))
    target.log(level, "%s %s - %s", text["prefix"], operation, message, extra={
        "retry_event": key,
        "retry_operation": operation,
        "retry_polls": polls,
        "retry_elapsed_s": elapsed,
        "retry_wait_s": wait,
        "retry_task_status": state,
    })
