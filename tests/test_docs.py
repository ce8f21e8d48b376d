"""The harness that runs the documentation's examples (``conftest.py`` at the root,
``tests/docs_support.py``): it finds every block, and it keeps them on this machine."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.docs_support import (
    following_output,
    install_guard,
    iter_python_blocks,
    same_output,
)

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_page_is_collected_and_has_its_examples() -> None:
    """Sybil's patterns cover README.md and every docs page; the pages hold the examples
    the notes count (a page losing its blocks would silently shrink the suite)."""
    pytest.importorskip("sybil", reason="the examples run only with sybil (test extra)")
    blocks = {page.name: len(list(iter_python_blocks(page.read_text(encoding="utf-8"))))
              for page in PAGES}
    assert blocks["README.md"] == 1 and sum(blocks.values()) >= 24, blocks


def test_the_guard_refuses_other_hosts_and_maps_the_named_ones(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup of a host the fakes do not serve is refused and recorded; a named one
    resolves to loopback and the fake's port; a connection off loopback is refused."""
    monkeypatch.setattr(socket, "getaddrinfo", socket.getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", socket.socket.connect)
    refused = install_guard({"api.example.com": 4321})
    with pytest.raises(socket.gaierror, match="not loopback"):
        socket.getaddrinfo("pypi.org", 443)
    assert socket.getaddrinfo("api.example.com", 443)[0][4][:2] == ("127.0.0.10", 4321)
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match="not loopback"):
        sock.connect(("192.0.2.1", 443))
    assert refused[-2:] == ["lookup pypi.org", "connect 192.0.2.1"]
    refused.clear()


def test_an_output_block_is_the_one_right_after_the_code() -> None:
    """Only an ``output`` block that directly follows a python block is its shown output."""
    text = "```python\nprint(1)\n```\n\n```output\n1\n```\n"
    end = text.index("```\n\n") + 4
    assert following_output(text, end) == "1\n"
    assert following_output("```python\nx\n```\n\nprose\n```output\n1\n```\n", 14) is None


def test_shown_output_matches_line_for_line_with_ellipsis_only() -> None:
    """``...`` in a shown output matches any text; everything else must be equal."""
    assert same_output("a\nb\n", "a\nb\n")
    assert not same_output("a\nb\nc\n", "a\nb\n")
    assert same_output("took 35ms, then 1000ms\n", "took ...ms, then 1000ms\n")
    assert not same_output("took 35ms, then 1500ms\n", "took ...ms, then 1000ms\n")
