"""Preset machinery: base-URL sessions, per-attempt preparation, and the documented recipe
for a fourth vendor's preset."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import textwrap
from typing import Any

import pytest
import requests

import requests_smartretry.presets as presets
from requests_smartretry import (
    AttemptEvent,
    Classification,
    EventKind,
    SmartRetryAdapter,
    Verdict,
    photo_adapter,
    photo_session,
)
from requests_smartretry.adapter import previous_attempts
from requests_smartretry.faultserver import FaultServer, RecordedRequest
from requests_smartretry.presets import AttemptPreparer, BaseURLSession


@pytest.mark.parametrize(
    ("endpoint", "url", "expected"),
    [
        ("https://ark.example/api/v3", "/contents/tasks", "https://ark.example/api/v3/contents/tasks"),
        ("https://ark.example/api/v3/", "contents/tasks", "https://ark.example/api/v3/contents/tasks"),
        ("https://visual.example", "?Action=CVProcess", "https://visual.example/?Action=CVProcess"),
        ("https://visual.example", "", "https://visual.example/"),
        ("https://ark.example/api/v3", "?a=1", "https://ark.example/api/v3?a=1"),
        ("https://ark.example/api/v3", "http://other.example/x", "http://other.example/x"),
    ],
)
def test_relative_urls_resolve_against_the_endpoint(endpoint: str, url: str,
                                                    expected: str) -> None:
    """Paths go under the endpoint (its path kept), full URLs pass through unchanged."""
    assert BaseURLSession(endpoint).resolve(url) == expected


def test_bad_endpoint_is_named() -> None:
    """An endpoint that is not an http(s) URL is refused, naming the parameter."""
    for bad in ("visual.example", "ftp://x.example", "https://x.example/?q=1"):
        with pytest.raises(ValueError, match="endpoint"):
            BaseURLSession(bad)


def test_credentials_never_go_to_another_host() -> None:
    """A preset session signs requests to its endpoint only; a full URL to another host
    carries no vendor Authorization."""
    with FaultServer() as vendor, FaultServer() as other:
        session = photo_session("AKLTx", "secret", endpoint=vendor.url(""), sleep=lambda s: None)
        session.get("/ok")
        session.get(other.url("/ok"))
        assert vendor.received()[0].headers["authorization"].startswith("HMAC-SHA256 ")
        assert "authorization" not in other.received()[0].headers


def test_preparer_fails_over_only_after_transport_failures() -> None:
    """The failover moves later attempts to the backup origin only once an attempt failed
    in transport, and never rewrites URLs on other hosts."""
    preparer = AttemptPreparer(primary="http://127.0.0.1:1", backup="http://127.0.0.1:2")
    seen: list[tuple[int, str, tuple[Classification, ...]]] = []

    def record(request: requests.PreparedRequest, attempt: int) -> requests.PreparedRequest:
        seen.append((attempt, preparer(request, attempt).url or "", previous_attempts()))
        return request

    with FaultServer() as server:
        def moved(_: FaultServer, sock: socket.socket, request: RecordedRequest) -> None:
            server.send(sock, 503, b"busy")

        server.handlers["/busy"] = moved
        adapter = SmartRetryAdapter(max_retries=2, prepare_attempt=record, sleep=lambda s: None)
        session = requests.Session()
        session.mount("http://", adapter)
        session.get(server.url("/busy"))
    assert [url for _, url, _ in seen] == [server.url("/busy")] * 3  # 503: not a host failure
    assert [len(history) for _, _, history in seen] == [0, 1, 2]
    assert seen[1][2][0].verdict is Verdict.SERVER_ERROR
    with pytest.raises(ValueError, match="together"):
        AttemptPreparer(primary="http://127.0.0.1:1")


def test_adapter_keywords_pass_through() -> None:
    """breaker=, budget= and hooks= reach the SmartRetryAdapter under a preset; policy
    keywords override the preset's policy, which keeps its vendor service key."""

    class Gate:
        def before_attempt(self, service: str) -> None: ...

        def allow_retry(self, service: str) -> bool:
            return True

        def __call__(self, event: AttemptEvent) -> None: ...

    gate = Gate()
    hook = print
    adapter = photo_adapter(breaker=gate, budget=gate, hooks=(hook,), max_retries=3)
    assert adapter.breaker is gate and adapter.budget is gate and adapter.extra_hooks == (hook,)
    assert adapter.policy.max_retries == 3 and adapter.policy.service == "volcengine-visual"
    with pytest.raises(TypeError, match="presets take policy fields"):
        photo_adapter(policy=adapter.policy)


def _recipe() -> str:
    doc = presets.__doc__ or ""
    block = doc.split("Writing a preset for a fourth vendor", 1)[1].split("::\n", 1)[1]
    return textwrap.dedent(block)


def test_fourth_vendor_recipe_is_short() -> None:
    """The documented recipe for a fourth vendor's preset stays about 20 lines of code."""
    lines = [line for line in _recipe().splitlines() if line.strip()]
    assert 15 <= len(lines) <= 26


class _Acme:
    """A fake 'Acme' vendor checking the recipe's signature; answers BUSY/BAD_INPUT once
    per scripted request."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.script: list[str] = []
        self.valid: list[str] = []
        self.server = FaultServer(handlers={"/orders": self.handle})

    def handle(self, server: FaultServer, sock: socket.socket,
               request: RecordedRequest) -> None:
        match = re.fullmatch(r"ACME (\w+):(\d+):([0-9a-f]{64})",
                             request.headers.get("authorization", ""))
        text = f"{request.method}\n{request.path}\n{match[2] if match else ''}".encode()
        if match is None or not hmac.compare_digest(
                match[3], hmac.new(self.secret, text, hashlib.sha256).hexdigest()):
            server.send(sock, 401, b'{"error": "AUTH"}')
            return
        self.valid.append(match[2])
        answer = {"error": self.script.pop(0)} if self.script else {"order_id": "A-1"}
        server.send(sock, 200, json.dumps(answer).encode(),
                    {"Content-Type": "application/json"})


@pytest.mark.parametrize(("fault", "requests_seen", "final"), [
    ("BUSY", 2, {"order_id": "A-1"}),
    ("BAD_INPUT", 1, {"error": "BAD_INPUT"}),
])
def test_fourth_vendor_recipe_works(fault: str, requests_seen: int, final: dict[str, Any]) -> None:
    """The documented recipe, run as written against a local fake: signed per attempt,
    a vendor 'busy' (HTTP 200) retried, a vendor 'bad input' not, calls named."""
    namespace: dict[str, Any] = {}
    exec(compile(_recipe(), "<presets recipe>", "exec"), namespace)
    acme = _Acme("s3cret")
    events: list[AttemptEvent] = []
    with acme.server:
        session = namespace["acme_session"]("kid", "s3cret", endpoint=acme.server.url(""),
                                            sleep=lambda s: None, hooks=(events.append,))
        acme.script.append(fault)
        response = session.post("/orders", json={"sku": "art-photo"})
        assert response.json() == final
        assert acme.server.hits() == requests_seen == len(acme.valid)
    assert {e.operation for e in events if e.kind is EventKind.START} == {"Acme 下单"}
    assert {e.service for e in events} == {"acme"}
