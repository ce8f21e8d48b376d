"""What the vendor waiters (``ark.wait_for_task``, ``volcengine.wait_for_task``) share: a task
poll over a ``requests`` session or an httpx client, the vendor's verdict on a failed
poll, the task's JSON, and the client's statistics as the wait's."""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Optional

import requests

from ..classify import Classification, classify_http_response
from ..deadline import current_scope
from ..errors import PollDeadlineExceeded, SmartRetryError, TaskFailedError
from ..events import Verdict
from ..policy import DEFAULT_RETRY_STATUSES
from ..poll import poll_until
from ..stats import Stats

__all__ = ["check_task_id", "client_stats", "cuts_at_deadline", "task_created", "task_json",
           "wait_for"]

ResponseHook = Callable[[Any], Optional[Classification]]


def check_task_id(name: str, value: Any) -> str:
    """``value`` as a task id: a non-empty string without whitespace."""
    if not isinstance(value, str) or not value or value != value.strip():
        raise ValueError(f"{name} must be a non-empty string without surrounding spaces, "
                         f"got {value!r}")
    return value


def client_stats(client: Any) -> Optional[Stats]:
    """The statistics of the smart adapter or transport that ``client`` sends through
    (``None`` when it has none): the wait's entry goes next to its polls' requests."""
    from ..accessors import stats_of

    try:
        return stats_of(client)
    except (TypeError, ValueError, LookupError):
        return None


def cuts_at_deadline(client: Any) -> bool:
    """Whether ``client`` sends through a smart adapter (a session) or a smart transport
    (``smart_client()``, ``video_client()``), which cut a request at the deadline of the
    enclosing call themselves."""
    from ..accessors import adapter_of

    if isinstance(client, requests.Session):
        try:
            adapter_of(client)
        except TypeError:
            return False
        return True
    return hasattr(client, "smart_transport")


def task_json(response: Any, operation: str) -> dict[str, Any]:
    """The JSON object of a task query's answer; a clear error when there is none."""
    try:
        body = json.loads(response.content or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise SmartRetryError(f"{operation}: HTTP {response.status_code} without a JSON "
                              "body") from exc
    if not isinstance(body, dict):
        raise SmartRetryError(f"{operation}: HTTP {response.status_code} without a JSON "
                              "object")
    return body


def vendor_classifier(hook: ResponseHook,
                      retry_statuses: frozenset[int]) -> Callable[[BaseException], Any]:
    """The callable API's ``classify``: a failed status is judged by the vendor's table (as
    the preset's adapter judges it), a :class:`TaskFailedError` is final."""

    def classify(error: BaseException) -> Optional[Classification]:
        if isinstance(error, TaskFailedError):
            return Classification(Verdict.BUSINESS, f"task {error.status}")
        response = getattr(error, "response", None)
        if response is None or not hasattr(response, "status_code"):
            return None
        verdict = classify_http_response(response, hook, retry_statuses)
        return None if verdict.verdict is Verdict.SUCCESS else verdict

    return classify


def task_created(task_id: str) -> None:
    """A submission created the task ``task_id`` (billed): an enclosing retrying call
    (``execute_with_retry`` around a submit-and-wait, a nested smart call) must not repeat
    the attempt, whatever its wait later raises; the error names the task to resume."""
    scope = current_scope()
    if scope is not None and scope.ledger is not None:
        scope.ledger.task_created()


def wait_for(send: Callable[[], Any], *, hook: ResponseHook,
             check: Callable[[Any], None], task_of: Callable[[Any], Any],
             done: Callable[[Any], bool], describe: Callable[[Any], Optional[str]],
             client: Any, task_id: str, deadline: float, operation: str,
             on_poll: Optional[Callable[[int, Any], Any]], stats: Any,
             options: dict[str, Any]) -> Any:
    """Poll ``send()`` (one request; its response) until ``done(response)``; returns
    ``task_of`` the done response.  ``check(response)`` may raise for a failed status
    before the vendor's table decides (``raise_for_status``: a retryable one is retried, a
    final one ends the wait).  ``on_poll`` and ``.last`` see tasks, not responses."""

    retry_statuses = frozenset(options.get("retry_statuses", DEFAULT_RETRY_STATUSES))

    def checked(response: Any) -> Any:
        if response.status_code >= 400:
            check(response)
            response.raise_for_status()
        elif classify_http_response(response, hook, retry_statuses).retryable:
            # A 2xx whose body says "busy, ask again" (visual 50429 QPS, 50500 internal):
            # the poll failed transiently, retried as a 5xx is; never a task's answer.
            raise requests.HTTPError(f"{operation}: HTTP {response.status_code} with a "
                                     "retryable vendor code", response=response)
        return response

    def fetch() -> Any:
        return checked(send())

    async def fetch_async() -> Any:  # an httpx.AsyncClient's poll
        return checked(await send())

    options.setdefault("classify", vendor_classifier(hook, retry_statuses))
    # A smart request is cut at the socket by the deadline it sees: no thread needed.  A
    # plain session or client is not: its poll runs in the callable API's worker thread,
    # abandoned at the deadline (else a hung poll would hold the wait past it).  (An async
    # fetch runs in the caller's task, cancelled at the deadline: no thread either way.)
    options.setdefault("run_in_thread", not cuts_at_deadline(client))
    if stats is None:
        stats = client_stats(client)
    notify = None
    if on_poll is not None:
        def notify(number: int, response: Any) -> Any:
            return on_poll(number, task_of(response))
    waiting = {"done": done, "deadline": deadline, "operation_name": operation,
               "on_poll": notify, "describe": describe, "stats": stats or None, **options}
    if inspect.iscoroutinefunction(getattr(client, "get", None)):  # an async client
        return _wait_async(poll_until(fetch_async, **waiting), task_id, task_of)
    try:
        response = poll_until(fetch, **waiting)
    except Exception as exc:
        _resumable(exc, task_id, task_of)
        raise
    return task_of(response)


async def _wait_async(waiting: Any, task_id: str, task_of: Callable[[Any], Any]) -> Any:
    """:func:`wait_for`'s ending, for the awaitable wait of an async client."""
    try:
        response = await waiting
    except BaseException as exc:
        _resumable(exc, task_id, task_of)
        raise
    return task_of(response)


def _resumable(exc: BaseException, task_id: str, task_of: Callable[[Any], Any]) -> None:
    """Whatever ended the wait carries the id to resume with (``task_id``); past the
    deadline, ``.last`` is the last task seen (not its response) and the message says the
    task may still finish."""
    if isinstance(exc, PollDeadlineExceeded):
        if exc.last is not None:
            try:
                exc.last = task_of(exc.last)
            except Exception:
                pass
        exc.task_id = task_id
        exc.args = (f"{exc.args[0]}; task {task_id!r} may still finish: wait for it "
                    "again with its id", *exc.args[1:])
        return
    if isinstance(exc, Exception):  # the id to resume with, on whatever ended the wait
        try:
            exc.task_id = task_id  # type: ignore[attr-defined]
        except AttributeError:  # an exception type with __slots__
            pass
