"""Static checks of the callable API's types, run by ``mypy --strict tests/typing_check.py``
(``tests/test_functions.py`` runs it).

Each misuse below carries a ``# type: ignore[code]``.  ``--strict`` turns on
``warn_unused_ignores``, so if ``with_retry`` stopped preserving signatures (the wrapper
decayed to ``Callable[..., Any]``) these ignores would become unused and mypy would fail.
No ``reveal_type``: the file is plain, importable Python.
"""

from __future__ import annotations

from typing import Callable

from requests_smartretry import execute_with_retry, execute_with_smart_retry, with_retry


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
