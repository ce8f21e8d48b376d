"""The compatibility matrix: the suite under urllib3 1.26.x and 2.x, and under the oldest
and newest supported requests.

    nox -l                      # the sessions
    nox -s "tests(newest)"      # one of them
    nox -s lint

CI (``.ci/run``) runs the newest pair directly and the urllib3 1.26 pair through
``.ci/compat.sh``; nox is for running the whole matrix locally.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

# (id, urllib3 requirement, requests requirement)
MATRIX = [
    # The oldest pair we support: requests 2.25 (setup.cfg's floor) needs urllib3 < 1.27.
    ("oldest", "urllib3>=1.26,<1.27", "requests==2.25.1"),
    # urllib3 1.26 with the newest requests (what many long-lived services still run).
    ("urllib3-1.26", "urllib3>=1.26,<2", "requests"),
    # The first urllib3 2 release line, with the first requests that accepts it.
    ("urllib3-2.0", "urllib3>=2.0,<2.1", "requests>=2.30,<2.31"),
    # The newest of both.
    ("newest", "urllib3>=2,<3", "requests"),
]


@nox.session
@nox.parametrize(("urllib3", "requests"), [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def tests(session: nox.Session, urllib3: str, requests: str) -> None:
    """Run the test suite with one pinned pair of urllib3 and requests."""
    # One resolution, so the extras cannot pull urllib3 or requests past the pins.
    session.install(".[test]", urllib3, requests)
    session.run("python", "-c", "import requests, urllib3; "
                "print('urllib3', urllib3.__version__, 'requests', requests.__version__)")
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict, as CI runs them."""
    session.install(".[lint]")
    session.run("ruff", "check", "requests_smartretry", "tests")
    session.run("mypy", "--strict", "requests_smartretry")
