"""The pytest plugin: a ``smartretry`` fixture for users' own test suites.

Registered automatically (entry point ``pytest11``) and inert unless a test asks for the
fixture by name::

    def test_checkout_survives_a_503(smartretry, responses):   # or @pytest.mark.usefixtures
        ...

    # conftest.py: every test of the suite
    @pytest.fixture(autouse=True)
    def _retries(smartretry):
        yield

For the test that requests it: test mode on (retries happen without their backoff waits, the
retry budget grants every retry) and fresh state (every breaker closed, every budget full,
every ``Stats`` empty) at its start and again at its end.  See
:mod:`requests_smartretry.testing`.  ``pytest -p no:requests_smartretry.pytest_plugin`` turns
the plugin off altogether (the entry point's name is the module's).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import testing

__all__ = ["smartretry"]


@pytest.fixture
def smartretry() -> Iterator[None]:
    """Fast retries (no waits, no budget denials) and fresh breaker/budget/stats state."""
    testing.reset_state()
    with testing.fast_retries():
        yield
    testing.reset_state()
