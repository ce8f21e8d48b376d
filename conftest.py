"""README.md's and docs/*.md's Python examples, each a test, run as written (Sybil).

Every ``python`` block runs as a user would paste it: in a fresh namespace (no block sees
another's names), in a working directory of its own, against the loopback fakes of
``tests/docs_support.py`` (the vendor hosts and ``api.example.com`` resolve to them; any
other connection off this machine fails the test).  A block followed by an ``output``
block runs in a fresh interpreter, and what it prints (stdout and stderr) must be that
block (``...`` standing for what varies).  ``bash`` blocks and other languages are not run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent

try:
    from sybil import Sybil
    from sybil.parsers.markdown import CodeBlockParser
except ImportError:  # the docs/test extra is not installed: the examples are not collected
    Sybil = None  # type: ignore[assignment,misc]


def _run_example(example: Any) -> None:
    """Evaluate one ``python`` block (see the module docstring)."""
    from tests.docs_support import following_output, same_output

    code = str(example.parsed)
    shown = following_output(example.document.text, example.end)
    where = f"{Path(example.path).relative_to(ROOT)}:{example.line}"
    internet = example.namespace["docs_internet"]
    refused = example.namespace["docs_refused"]
    before = len(refused)
    if shown is None:
        namespace: dict[str, Any] = {"__name__": "__main__"}
        exec(compile(code, where, "exec"), namespace)  # the page's own example, as written
    else:
        prelude = "from tests.docs_support import install_in_child; install_in_child()\n"
        env = {**os.environ, **internet.environment(),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        result = subprocess.run(
            [sys.executable, "-u", "-c", prelude + code], cwd=os.getcwd(), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
            timeout=120)
        assert result.returncode == 0, f"{where} failed:\n{result.stdout}"
        assert same_output(result.stdout, shown), (
            f"{where} printed:\n{result.stdout}\nthe page shows:\n{shown}")
    assert refused[before:] == [], f"{where} tried to leave this machine: {refused[before:]}"


@pytest.fixture(scope="module")
def docs_internet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The loopback fakes behind the examples' hosts, for one page."""
    pytest.importorskip("cryptography")
    from tests.docs_support import LoopbackInternet

    with LoopbackInternet(tmp_path_factory.mktemp("docs")) as internet:
        yield internet


@pytest.fixture
def docs_refused(docs_internet: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The example's world: the guard and host map, the CA bundle and credentials in the
    environment, the key files in the working directory, a clean slate of state."""
    import socket

    from requests_smartretry import reset_state, set_testing
    from tests.docs_support import install_guard

    monkeypatch.setattr(socket, "getaddrinfo", socket.getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", socket.socket.connect)
    refused = install_guard(docs_internet.hosts)
    for name, value in docs_internet.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(docs_internet.directory)
    yield refused
    set_testing(False)  # an example may turn test mode on process-wide (docs/testing.md)
    reset_state()


if Sybil is not None:
    pytest_collect_file = Sybil(
        parsers=[CodeBlockParser(language="python", evaluator=_run_example)],
        patterns=["README.md", "docs/*.md"],
        fixtures=["docs_internet", "docs_refused"],
    ).pytest()
