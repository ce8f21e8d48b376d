"""Static checks of the public API's types, run by ``mypy --strict tests/typing_check.py``
(``tests/test_functions.py`` and ``tests/test_typing.py`` run it; the latter also checks
every README snippet, with the names the snippets take as given defined here).

Each misuse below carries a ``# type: ignore[code]``.  ``--strict`` turns on
``warn_unused_ignores``, so if ``with_retry`` stopped preserving signatures (the wrapper
decayed to ``Callable[..., Any]``) these ignores would become unused and mypy would fail.
No ``reveal_type``: the file is plain, importable Python.
"""

from __future__ import annotations

from typing import Any, Callable

import requests
from requests.adapters import HTTPAdapter

# urllib3 1.26 ships no types (the compat run): the ignore is needed there, unused on 2.x.
from urllib3.util.retry import Retry  # type: ignore[import-untyped, unused-ignore]

from requests_smartretry import (
    RetryPolicy,
    RetryRateAlert,
    SmartRetryAdapter,
    Stats,
    Verdict,
    VerdictRule,
    adapter_of,
    execute_with_retry,
    execute_with_smart_retry,
    poll_until,
    retry_options,
    smart_session,
    stats_of,
    video_session,
    with_retry,
)

# What README snippets use without defining it (``from tests.typing_check import *``).
__all__ = [
    "APIV3_KEY",
    "API_V3_KEY",
    "APPID",
    "KEY_PEM",
    "MCHID",
    "PUB_KEY_ID",
    "PUB_KEY_PEM",
    "SERIAL",
    "B",
    "HTTPAdapter",
    "Retry",
    "RetryPolicy",
    "RetryRateAlert",
    "SmartRetryAdapter",
    "VendorBusyError",
    "Verdict",
    "VerdictRule",
    "VisualService",
    "WeChatPay",
    "WeChatPayType",
    "ak",
    "client",
    "key",
    "mark_paid",
    "prompt",
    "session",
    "sk",
    "smart_session",
]


class VendorBusyError(Exception):
    """A vendor SDK's "try again later" error."""


class VendorClient:
    """A vendor SDK's client."""

    def create_task(self, prompt: str) -> dict[str, str]:
        """Submit a task."""
        return {"prompt": prompt}

    def query_order(self, order_id: str) -> dict[str, str]:
        """Look an order up."""
        return {"order_id": order_id}


class VisualService:
    """volcengine's VisualService (the SDK is untyped)."""

    session = requests.Session()


class WeChatPay:
    """wechatpayv3's WeChatPay (the SDK is untyped)."""

    def __init__(self, **kwargs: Any) -> None:
        self._core = kwargs

    def pay(self, **kwargs: Any) -> tuple[int, str]:
        """Place an order."""
        return 200, "{}"


class WeChatPayType:
    """wechatpayv3's WeChatPayType."""

    JSAPI = 0


client = VendorClient()
ak, sk, key = "AKLT…", "secret", "ark-key"
B = "https://ark.cn-shanghai.volces.com/api/v3"
MCHID, SERIAL, APPID = "1900000001", "5157F09E…", "wxd678efh567hg6787"
KEY_PEM = "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n"
APIV3_KEY = "0123456789abcdef0123456789abcdef"
prompt = "cat"
session = requests.Session()
API_V3_KEY = "0123456789abcdef0123456789abcdef"
PUB_KEY_PEM = "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n"
PUB_KEY_ID = "PUB_KEY_ID_0114"


def mark_paid(notification: dict[str, Any]) -> None:
    """The shop's own bookkeeping for a verified payment notification."""


@with_retry(max_retries=2, timeout=5.0, operation_name="查询订单")
def query_order(order_id: str, *, verbose: bool = False) -> dict[str, str]:
    """A decorated function: its parameters and return type survive."""
    return {"order_id": order_id, "verbose": str(verbose)}


def add(a: int, b: int = 0) -> int:
    """A function wrapped without decorator syntax."""
    return a + b


checked_add = with_retry(add, smart=True)


def takes_int_adder(fn: Callable[[int, int], int]) -> int:
    """Accepts only a callable with add's exact shape."""
    return fn(1, 2)


def well_typed_uses() -> None:
    """What must type-check."""
    order: dict[str, str] = query_order("T1000", verbose=True)
    total: int = checked_add(1, b=2)
    takes_int_adder(checked_add)
    value: int = execute_with_retry(lambda: add(1, 2), max_retries=1)
    text: str = execute_with_smart_retry(lambda: "ok")
    del order, total, value, text


def misuses_that_must_be_errors() -> None:
    """What must NOT type-check (each ignore is required, or mypy reports it unused)."""
    query_order(42)  # type: ignore[arg-type]
    query_order("T1000", verbos=True)  # type: ignore[call-arg]
    wrong: int = query_order("T1000")  # type: ignore[assignment]
    checked_add("1", "2")  # type: ignore[arg-type]
    mistyped: str = execute_with_retry(lambda: add(1, 2))  # type: ignore[assignment]
    del wrong, mistyped


def typed_keywords() -> None:
    """Every wrapper's keywords are checked, names and types (one shared TypedDict)."""
    smart: requests.Session = smart_session(max_retries=Retry(total=2), timeout=5.0,
                                            hooks=[print], stats=False, lang="en")
    adapter = SmartRetryAdapter(max_retries=2, jitter="full", breaker=None)
    policy = RetryPolicy().replace(max_retries=3, deadline=10.0, retry_statuses={503})
    counts: Stats = stats_of(smart)
    same: Stats = stats_of(adapter)
    retries: int = adapter_of(smart).policy.max_retries
    video = video_session(api_key="k", timeout=60.0)
    del smart, policy, counts, same, retries, video


@with_retry(max_retries=1)
async def fetch_async(order_id: str) -> dict[str, str]:
    return {"id": order_id}


async def async_uses() -> None:
    """An async def stays an async def; execute_with_retry(async_fn) and
    poll_until(async_fetch) are awaitables of the value."""
    order: dict[str, str] = await fetch_async("o-1")
    total: int = await execute_with_retry(_async_one, max_retries=1)
    polled: int = await poll_until(_async_one, done=lambda n: n > 0, deadline=5.0)
    del order, total, polled


async def _async_one() -> int:
    return 1


def async_misuses_that_must_be_errors() -> None:
    """An awaitable is not its value."""
    _: int = execute_with_retry(_async_one)  # type: ignore[assignment]


def keyword_misuses_that_must_be_errors() -> None:
    """Misspelt or mistyped keywords are mypy errors, not silently accepted ``**Any``."""
    smart_session(max_retry=2)  # type: ignore[call-arg]
    smart_session(timeout="5")  # type: ignore[arg-type]
    SmartRetryAdapter(lang="de")  # type: ignore[arg-type]
    RetryPolicy().replace(no_such=1)  # type: ignore[call-arg]
    execute_with_retry(lambda: 1, max_retry=1)  # type: ignore[call-overload]
    video_session(api_key="k", timout=5.0)  # type: ignore[call-arg]
    retry_options(max_retry=0)  # type: ignore[call-arg]
    retry_options(timeout="5")  # type: ignore[arg-type]
