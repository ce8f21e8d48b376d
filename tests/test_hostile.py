"""A hostile server cannot stall a client past its deadline or fill its memory."""

from __future__ import annotations

import socket
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from requests_smartretry import AttemptDeadlineExceeded, EventKind, smart_session
from requests_smartretry.faultserver import FaultServer, RecordedRequest

pytestmark = pytest.mark.slow

TEN_GB = 10 * 1024**3
# Real sockets on a loaded 2-core machine: bounds are generous, never tight.
SLACK = 3.0
# A handler never runs longer than this, whatever the client does.
HANDLER_LIMIT = 20.0

def _until_stopped(server: FaultServer, sock: socket.socket) -> Iterator[None]:
    """Loop for a hostile handler: ends when the server stops or the time limit passes.

    A client that shut its socket down may leave the connection in FIN-WAIT-2 with a zero
    window: the send timeout ends the handler instead of blocking for a minute.
    """
    sock.settimeout(2.0)
    limit = time.monotonic() + HANDLER_LIMIT
    while time.monotonic() < limit and not server._stopping.is_set():
        yield None


def _endless_body(server: FaultServer, sock: socket.socket, request: RecordedRequest) -> None:
    """A chunked body that never ends (4 KiB every few milliseconds)."""
    sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
    for _ in _until_stopped(server, sock):
        sock.sendall(chunk)
        time.sleep(0.002)


def _ten_gigabytes(server: FaultServer, sock: socket.socket, request: RecordedRequest) -> None:
    """Announces 10 GB and sends as fast as the client reads."""
    sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {TEN_GB}\r\n\r\n".encode())
    piece = b"x" * 65536
    for _ in _until_stopped(server, sock):
        sock.sendall(piece)


def _header_drip(server: FaultServer, sock: socket.socket, request: RecordedRequest) -> None:
    """A status line, then one header line every 50 ms, never finishing the headers."""
    sock.sendall(b"HTTP/1.1 200 OK\r\n")
    for number, _ in enumerate(_until_stopped(server, sock)):
        sock.sendall(f"X-Drip-{number}: x\r\n".encode())
        time.sleep(0.05)


def _hostile_status_line(server: FaultServer, sock: socket.socket,
                         request: RecordedRequest) -> None:
    """A 60 KB status line crafted to be worst-case input for a backtracking regex."""
    sock.sendall(b"HTTP/1.1 " + b"token" * 12000 + b"\r\n\r\n")
    server.reset(sock)


def _header_flood(server: FaultServer, sock: socket.socket, request: RecordedRequest) -> None:
    """Thousands of headers, more than any client should accept."""
    headers = b"".join(b"X-Flood-%d: v\r\n" % n for n in range(5000))
    sock.sendall(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 0\r\n\r\n")


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    handlers: dict[str, Any] = {
        "/endless": _endless_body,
        "/ten-gigabytes": _ten_gigabytes,
        "/header-drip": _header_drip,
        "/hostile-status": _hostile_status_line,
        "/header-flood": _header_flood,
    }
    with FaultServer(handlers=handlers) as fault_server:
        yield fault_server


@pytest.mark.parametrize("asked", ["99999999", "9" * 40, "Fri, 31 Dec 9999 23:59:59 GMT"])
@pytest.mark.parametrize("status", [429, 503])
def test_huge_retry_after_returns_at_once(server: FaultServer, status: int, asked: str) -> None:
    """A Retry-After far above the cap ends the call at once with the server's response."""
    session = smart_session(max_retries=3, timeout=5.0, backoff_base=0.5, backoff_max=2.0,
                            log=False)
    route = f"/status/{status}"
    before = server.hits(route)
    started = time.monotonic()
    with session:
        response = session.get(server.url(f"{route}?retry_after={asked}"))
    elapsed = time.monotonic() - started
    assert response.status_code == status
    assert server.hits(route) - before == 1
    give_up = response.retry_history[-1]  # type: ignore[attr-defined]
    assert give_up.kind is EventKind.GIVE_UP
    assert give_up.give_up_reason == "retry_after_too_long"
    assert give_up.retry_after is not None and give_up.retry_after > 2.0
    assert elapsed < SLACK  # nothing was slept: the cap (2 s) was not even waited


def test_endless_body_cannot_pass_the_deadline(server: FaultServer) -> None:
    """A body that never ends is cut at the attempt deadline, on every attempt."""
    session = smart_session(max_retries=1, timeout=0.5, backoff_base=0.01, backoff_max=0.01,
                            log=False)
    started = time.monotonic()
    with session, pytest.raises(AttemptDeadlineExceeded) as caught:
        session.get(server.url("/endless"))
    elapsed = time.monotonic() - started
    assert isinstance(caught.value, requests.exceptions.Timeout)
    starts = [e for e in caught.value.retry_history  # type: ignore[attr-defined]
              if e.kind is EventKind.START]
    assert len(starts) == 2
    assert elapsed < 2 * 0.5 + 0.01 + SLACK


def test_header_drip_cannot_pass_the_deadline(server: FaultServer) -> None:
    """Headers trickled forever (each read succeeds) are cut at the attempt deadline."""
    session = smart_session(max_retries=0, timeout=0.5, log=False)
    started = time.monotonic()
    with session, pytest.raises(requests.exceptions.Timeout):
        session.get(server.url("/header-drip"))
    assert time.monotonic() - started < 0.5 + SLACK


def test_ten_gigabytes_streamed_and_stopped_stay_small(server: FaultServer) -> None:
    """With stream=True, reading a few MB of a 10 GB body and closing keeps memory small
    and returns at once; the connection is dropped, not drained, and the session goes on."""
    session = smart_session(max_retries=0, timeout=2.0, log=False)
    tracemalloc.start()
    try:
        started = time.monotonic()
        with session:
            response = session.get(server.url("/ten-gigabytes"), stream=True)
            assert int(response.headers["Content-Length"]) == TEN_GB
            read = 0
            for chunk in response.iter_content(chunk_size=65536):
                read += len(chunk)
                if read >= 8 * 1024 * 1024:
                    break
            response.close()
            closed_after = time.monotonic() - started
            assert session.get(server.url("/ok")).status_code == 200
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"\n10 GB streamed: read {read} bytes, peak traced {peak} bytes, "
          f"closed after {closed_after:.2f}s")
    assert read >= 8 * 1024 * 1024
    assert peak < 32 * 1024 * 1024, f"peak traced memory {peak} bytes"
    assert closed_after < 2.0 + SLACK


def test_ten_gigabytes_unstreamed_stop_at_the_deadline(server: FaultServer) -> None:
    """Without stream=True the body is read inside the deadline: at the deadline reading
    stops, and nothing of the partial body stays in memory, not even via the exception."""
    session = smart_session(max_retries=0, timeout=0.5, log=False)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        started = time.monotonic()
        with session, pytest.raises(AttemptDeadlineExceeded) as caught:
            session.get(server.url("/ten-gigabytes"))
        elapsed = time.monotonic() - started
        held = tracemalloc.get_traced_memory()[0] - before
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    print(f"\n10 GB unstreamed: cut after {elapsed:.2f}s, peak traced {peak} bytes, "
          f"held afterwards {held} bytes")
    assert elapsed < 0.5 + SLACK
    assert caught.value.__cause__ is None or isinstance(caught.value.__cause__,
                                                        requests.RequestException)
    # What was buffered until the deadline (peak) is released; holding the error keeps
    # only a few frames and strings.
    assert held < 4 * 1024 * 1024, f"{held} bytes still held after the call (peak {peak})"


def test_hostile_status_line_fails_fast(server: FaultServer) -> None:
    """A 60 KB garbage status line is a prompt ConnectionError, not a regex hang."""
    session = smart_session(max_retries=1, timeout=2.0, backoff_base=0.01, backoff_max=0.01,
                            log=False)
    started = time.monotonic()
    with session, pytest.raises(requests.exceptions.ConnectionError) as caught:
        session.get(server.url("/hostile-status"))
    assert time.monotonic() - started < 2 * 2.0 + SLACK
    assert len(str(caught.value)) < 200_000


def test_header_flood_is_an_error_not_a_crash(server: FaultServer) -> None:
    """Thousands of response headers give a requests error, classified and not retried
    forever."""
    session = smart_session(max_retries=1, timeout=2.0, backoff_base=0.01, backoff_max=0.01,
                            log=False)
    with session:
        try:
            response = session.get(server.url("/header-flood"))
        except requests.RequestException as exc:
            history = exc.retry_history  # type: ignore[attr-defined]
        else:  # a client that accepts them must still answer once
            history = response.retry_history  # type: ignore[attr-defined]
    assert 1 <= sum(1 for e in history if e.kind is EventKind.START) <= 2
