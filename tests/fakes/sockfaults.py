"""Fault injection at the client socket: the next connection urllib3 makes fails with an
errno at a chosen phase of the exchange, as the kernel would report it.

Installed with :func:`install` (a pytest ``monkeypatch``), it replaces urllib3's
``create_connection`` (both 1.26 and 2.x call it through the module) and the SSL socket
class, so every client (a smart session, plain ``requests``) is affected alike;
:func:`install_for_httpx` does the same for httpx (httpcore's ``socket.create_connection``).  One
:class:`Plan` is armed per scenario and is taken by the first connection that reaches its
phase; later connections are clean, so a retry can succeed.

Phases (what the first connection does):

=============  ===================================================================
``refused``    connects to a port nobody listens on (a real ECONNREFUSED)
``connect``    ``connect()`` raises the errno
``tls``        the TLS handshake raises the errno (client side, before any byte of it)
``headers``    the first 5 bytes of the request head are written, then the errno
``body``       the head and 3 bytes of the body are written, then the errno
``after_read`` the request is written and the server answers (it executed it), then
               the first read raises the errno instead of returning the answer
``read_body``  the response head and 2 bytes of its body arrive, then the errno
=============  ===================================================================

Once a socket has failed it is shut down (the server sees the request end there) and
every later operation on it raises the same errno.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
import urllib3.util.connection

_HEAD_END = b"\r\n\r\n"


@dataclass
class Plan:
    """One scenario's fault: the phase, the errno, and whether a connection took it."""

    phase: str
    errno: int
    refused_port: int = 0
    taken: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, phases: tuple[str, ...]) -> bool:
        """True once: for the first caller asking for this plan's phase."""
        with self._lock:
            if self.taken or self.phase not in phases:
                return False
            self.taken = True
            return True

    def error(self) -> OSError:
        """The injected error, as the kernel's (``OSError`` picks the errno's subclass)."""
        return OSError(self.errno, os.strerror(self.errno))


class _Current:
    plan: Optional[Plan] = None


def arm(plan: Optional[Plan]) -> None:
    """Make ``plan`` the fault of the next connection (``None``: no fault)."""
    _Current.plan = plan


def _take(*phases: str) -> Optional[Plan]:
    plan = _Current.plan
    return plan if plan is not None and plan.take(phases) else None


class FaultSocket(socket.socket):
    """A client socket that fails with the plan's errno at the plan's phase."""

    def arm(self, plan: Optional[Plan]) -> None:
        self.plan = plan
        self.failed = False
        self.written = b""  # what the request stream has been, up to the fault
        self.received = b""
        self.fail_next_read = False

    def _fail(self) -> OSError:
        assert self.plan is not None
        if not self.failed:
            self.failed = True
            try:
                super().shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return self.plan.error()

    # -- writes: http.client writes with sendall, everything else through send --------

    def sendall(self, data: Any, flags: int = 0) -> None:  # type: ignore[override]
        if self.failed:
            raise self._fail()
        data = bytes(data)
        cut = self._write_cut(data)
        if cut is None:
            self.written += data
            super().sendall(data, flags)
            return
        super().sendall(data[:cut], flags)
        raise self._fail()

    def send(self, data: Any, flags: int = 0) -> int:  # type: ignore[override]
        self.sendall(data, flags)
        return len(data)

    def _write_cut(self, data: bytes) -> Optional[int]:
        """How much of ``data`` to write before the fault, or ``None``: all of it."""
        plan = self.plan
        if plan is None or plan.phase not in ("headers", "body"):
            return None
        stream = self.written + data
        if plan.phase == "headers":
            at = 5
        else:
            end = stream.find(_HEAD_END)
            if end < 0:
                return None
            at = end + len(_HEAD_END) + 3
        if len(stream) < at:
            return None
        return at - len(self.written)

    # -- reads: http.client reads through makefile(), i.e. recv_into ------------------

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if self.failed or self.fail_next_read:
            raise self._fail()
        got = super().recv_into(buffer, nbytes, flags)
        plan = self.plan
        if plan is None or got == 0:
            return got
        if plan.phase == "after_read":
            raise self._fail()  # the server answered: it executed the request
        if plan.phase == "read_body":
            before = len(self.received)
            self.received += bytes(memoryview(buffer)[:got])
            end = self.received.find(_HEAD_END)
            if end >= 0:
                keep = end + len(_HEAD_END) + 2 - before
                if keep < got:
                    self.fail_next_read = True
                    return max(keep, 0) or self.recv_into(buffer, nbytes, flags)
        return got

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        buffer = bytearray(bufsize)
        got = self.recv_into(buffer, bufsize, flags)
        return bytes(buffer[:got])


def _create_connection(address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,
                       source_address: Any = None, socket_options: Any = None) -> socket.socket:
    """urllib3's ``create_connection`` for loopback, with the armed fault."""
    host, port = address
    assert host in ("127.0.0.1", "localhost"), host  # loopback only
    refused = _take("refused")
    connect_fault = _take("connect")
    sock = FaultSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.arm(_take("headers", "body", "after_read", "read_body"))
    try:
        for option in socket_options or ():
            sock.setsockopt(*option)
        if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
            sock.settimeout(timeout)
        if connect_fault is not None:
            raise connect_fault.error()
        sock.connect(("127.0.0.1", refused.refused_port if refused is not None else port))
    except BaseException:
        sock.close()
        raise
    return sock


class FaultSSLSocket(ssl.SSLSocket):
    """The SSL socket class of every context: a client handshake fails with the errno."""

    def do_handshake(self, block: bool = False) -> None:
        if not self.server_side:
            plan = _take("tls")
            if plan is not None:
                raise plan.error()
        super().do_handshake(block)


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route urllib3's connections through the fault injector (until the test ends)."""
    monkeypatch.setattr(urllib3.util.connection, "create_connection", _create_connection)
    monkeypatch.setattr(ssl.SSLContext, "sslsocket_class", FaultSSLSocket)
    monkeypatch.setattr(_Current, "plan", None)


def install_for_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route httpx's connections through the fault injector too: httpcore's sync backend
    connects with ``socket.create_connection`` and writes with ``send``, reads with
    ``recv``, which :class:`FaultSocket` intercepts as it does urllib3's."""
    install(monkeypatch)
    monkeypatch.setattr(socket, "create_connection", _create_connection)


# -- asyncio: the same plans, injected at httpcore's async network backend ------------------


class FaultAsyncBackend:
    """An httpcore async network backend (wrapping the real one) whose next connection
    fails as the armed plan says, raising what httpcore's own backend raises for the
    kernel's error (``ConnectError`` / ``WriteError`` / ``ReadError`` from the ``OSError``).
    Install it on an ``httpx.AsyncHTTPTransport`` with :func:`install_async` before the
    smart transport wraps it.  (asyncio's sockets are not ``socket.create_connection``'s,
    so the sync injector cannot reach them.)"""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    async def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None,
                          local_address: Optional[str] = None,
                          socket_options: Any = None) -> Any:
        import httpcore

        assert host in ("127.0.0.1", "localhost"), host  # loopback only
        refused = _take("refused")
        connect_fault = _take("connect")
        if connect_fault is not None:
            error = connect_fault.error()
            raise httpcore.ConnectError(error) from error  # as httpcore's map_exceptions
        stream = await self._backend.connect_tcp(
            host, refused.refused_port if refused is not None else port, timeout=timeout,
            local_address=local_address, socket_options=socket_options)
        return FaultAsyncStream(stream, _take("headers", "body", "after_read", "read_body"))

    async def connect_unix_socket(self, path: str, timeout: Optional[float] = None,
                                  socket_options: Any = None) -> Any:
        raise NotImplementedError("loopback TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class FaultAsyncStream:
    """An async network stream that fails with the plan's errno at the plan's phase (the
    same phases as :class:`FaultSocket`); once failed, it is closed (the server sees the
    request end there) and every later operation raises the same error."""

    def __init__(self, stream: Any, plan: Optional[Plan]) -> None:
        self._stream = stream
        self.plan = plan
        self.failed = False
        self.written = b""
        self.received = b""
        self.fail_next_read = False

    async def _fail(self, kind: Any) -> BaseException:
        assert self.plan is not None
        if not self.failed:
            self.failed = True
            await self._stream.aclose()
        error = self.plan.error()
        raised = kind(error)  # the OSError as its argument, as httpcore's map_exceptions
        raised.__cause__ = error
        return raised  # type: ignore[no-any-return]

    async def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        import httpcore

        if self.failed:
            raise await self._fail(httpcore.WriteError)
        data = bytes(buffer)
        cut = FaultSocket._write_cut(self, data)  # type: ignore[arg-type]  # same fields
        if cut is None:
            self.written += data
            await self._stream.write(data, timeout)
            return
        if cut > 0:
            await self._stream.write(data[:cut], timeout)
        raise await self._fail(httpcore.WriteError)

    async def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        import httpcore

        if self.failed or self.fail_next_read:
            raise await self._fail(httpcore.ReadError)
        got = await self._stream.read(max_bytes, timeout)
        plan = self.plan
        if plan is None or not got:
            return got  # type: ignore[no-any-return]
        if plan.phase == "after_read":
            raise await self._fail(httpcore.ReadError)  # the server answered: executed
        if plan.phase == "read_body":
            before = len(self.received)
            self.received += got
            end = self.received.find(_HEAD_END)
            if end >= 0:
                keep = end + len(_HEAD_END) + 2 - before
                if keep < len(got):
                    self.fail_next_read = True
                    if keep <= 0:
                        raise await self._fail(httpcore.ReadError)
                    return got[:keep]  # type: ignore[no-any-return]
        return got  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        if not self.failed:
            await self._stream.aclose()

    async def start_tls(self, ssl_context: Any, server_hostname: Optional[str] = None,
                        timeout: Optional[float] = None) -> Any:
        import httpcore

        plan = _take("tls")
        if plan is not None:
            error = plan.error()
            await self._stream.aclose()
            raise httpcore.ConnectError(error) from error
        secured = await self._stream.start_tls(ssl_context, server_hostname, timeout)
        wrapped = FaultAsyncStream(secured, self.plan)
        return wrapped

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def install_async(transport: Any) -> None:
    """Give ``transport`` (an ``httpx.AsyncHTTPTransport``) the fault-injecting backend."""
    import httpcore

    pool = transport._pool  # httpx keeps its httpcore pool here
    backend = pool._network_backend or httpcore.AnyIOBackend()
    pool._network_backend = FaultAsyncBackend(backend)
