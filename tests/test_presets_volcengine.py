"""Volcengine visual preset: V4 signing checked against the SDK, the code table, the legacy path."""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import logging
import pickle
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests
from volcengine.auth.SignerV4 import SignerV4
from volcengine.auth.SignParam import SignParam
from volcengine.base.Request import Request as VolcRequest
from volcengine.Credentials import Credentials
from volcengine.visual.VisualService import VisualService

from requests_smartretry import (
    AttemptEvent,
    EventKind,
    photo_adapter,
    photo_session,
)
from requests_smartretry.faultserver import RecordedRequest
from requests_smartretry.presets import VolcengineSigner
from requests_smartretry.presets.volcengine import mount_on_sdk_service
from tests.fakes.volcengine import FakeVisual, gateway_error, sdk_authorization, visual_error

AK, SK = "AKLTfakeAccessKey", "c2VjcmV0S2V5Rm9yVGVzdHM="
PROCESS = "?Action=CVProcess&Version=2022-08-31"
FIXED = datetime.datetime(2026, 11, 27, 12, 30, 45, tzinfo=datetime.timezone.utc)


class Recorder:
    """Collects attempt events and backoff waits."""

    def __init__(self) -> None:
        self.events: list[AttemptEvent] = []
        self.waits: list[float] = []

    def __call__(self, event: AttemptEvent) -> None:
        self.events.append(event)

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture()
def fake():
    with FakeVisual(AK, SK) as server:
        yield server


def fast(**extra: Any) -> dict[str, Any]:
    """Preset options for tests: tiny backoff, no real sleeping."""
    return {"backoff_base": 0.01, "backoff_max": 0.05, "sleep": lambda s: None, **extra}


def signed(url: str, body: bytes, headers: dict[str, str], method: str = "POST"):
    prepared = requests.Request(method, url, data=body, headers=headers).prepare()
    VolcengineSigner(AK, SK, clock=FIXED.timestamp).sign(prepared)
    return prepared


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://visual.volcengineapi.com/?Action=CVProcess&Version=2022-08-31",
         "visual.volcengineapi.com"),
        ("https://visual.volcengineapi.com:443/a%20b/c?b=2&a=x%20y&a=z&empty=",
         "visual.volcengineapi.com"),
        ("http://127.0.0.1:8080/?Version=2022-08-31&Action=CVSync2AsyncGetResult",
         "127.0.0.1:8080"),
    ],
)
def test_signature_equals_sdk_sign_only(url: str, host: str) -> None:
    """Our Authorization equals what the volcengine SDK's SignerV4 computes for the same
    request, time and keys."""
    body = b'{"req_key": "img2img_photoverse", "image_urls": ["https://x/1.png"]}'
    prepared = signed(url, body, {"Content-Type": "application/json"})
    parts = urlsplit(prepared.url or "")
    wire = RecordedRequest("POST", f"{parts.path}?{parts.query}",
                           {"content-type": "application/json", "host": host}, body)
    expected = sdk_authorization(wire, AK, SK, FIXED, ["content-type", "host"])
    assert prepared.headers["Authorization"] == expected
    assert prepared.headers["X-Date"] == "20261127T123045Z"
    assert prepared.headers["X-Content-Sha256"] == hashlib.sha256(body).hexdigest()


def test_signature_equals_sdk_sign_as_the_sdk_calls_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The headers equal those of SignerV4.sign, the path the SDK's VisualService.json uses."""
    monkeypatch.setattr(SignerV4, "get_current_format_date",
                        staticmethod(lambda: "20261127T123045Z"))
    body = '{"req_key": "x"}'
    sdk = VolcRequest()
    sdk.set_method("POST")
    sdk.set_path("/")
    sdk.set_host("visual.volcengineapi.com")
    sdk.set_query(OrderedDict([("Action", "CVProcess"), ("Version", "2022-08-31")]))
    sdk.set_headers(OrderedDict([("Host", "visual.volcengineapi.com"),
                                 ("Content-Type", "application/json")]))
    sdk.set_body(body)
    SignerV4.sign(sdk, Credentials(AK, SK, "cv", "cn-north-1"))
    ours = signed("https://visual.volcengineapi.com/" + PROCESS, body.encode(),
                  {"Content-Type": "application/json"})
    assert ours.headers["Authorization"] == sdk.headers["Authorization"]


def test_two_attempts_carry_different_dates_both_valid(fake: FakeVisual) -> None:
    """A retried request is signed afresh: a new X-Date on each attempt, and the SDK's
    signer accepts both."""
    start = time.time()
    ticks = itertools.count()
    session = photo_session(AK, SK, endpoint=fake.endpoint,
                            sign_clock=lambda: start + 2 * next(ticks), **fast())
    fake.script("CVProcess", (500, visual_error(50500)))
    response = session.post(PROCESS, json={"req_key": "x"})
    assert response.json()["code"] == 10000
    assert fake.hits() == 2
    assert len(fake.valid_signatures) == 2
    assert fake.valid_signatures[0] != fake.valid_signatures[1]


VISUAL_ROWS = [
    *[(429, code, 2) for code in (50429, 50430)],
    *[(500, code, 2) for code in (50500, 50501)],
    *[(400, code, 2) for code in (50511, 50516, 50517, 50519)],
    *[(400, code, 1) for code in (50411, 50412, 50413, 50512, 50518, 50520, 50521, 50522,
                                  50215)],
]


@pytest.mark.parametrize(("status", "code", "requests_seen"), VISUAL_ROWS)
def test_vendor_code_table(fake: FakeVisual, status: int, code: int, requests_seen: int) -> None:
    """Each row of the vendor's code table: retried codes reach the server twice and end in
    success, permanent ones once and come back as the vendor's answer."""
    session = photo_session(AK, SK, endpoint=fake.endpoint, **fast())
    fake.script("CVProcess", (status, visual_error(code)))
    response = session.post(PROCESS, json={"req_key": "x"})
    assert fake.hits() == requests_seen
    if requests_seen == 2:
        assert response.status_code == 200 and response.json()["code"] == 10000
    else:
        assert response.status_code == status and response.json()["code"] == code


GATEWAY_ROWS = [
    ("InternalError", 500, 2),
    ("FailToConnect", 502, 2),
    ("ServiceUnavailableTemp", 503, 2),
    ("InternalServiceTimeout", 504, 2),
    ("FlowLimitExceeded", 429, 2),
    ("InvalidTimestamp", 401, 2),  # photo_session signs: the retry carries a fresh X-Date
    ("SignatureDoesNotMatch", 401, 1),
    ("AccessDenied", 403, 1),
]


@pytest.mark.parametrize(("code", "status", "requests_seen"), GATEWAY_ROWS)
def test_gateway_error_table(fake: FakeVisual, code: str, status: int,
                             requests_seen: int) -> None:
    """Each gateway error (ResponseMetadata.Error.Code) is retried or not as the vendor says;
    InvalidTimestamp is retried because the retry is signed again."""
    session = photo_session(AK, SK, endpoint=fake.endpoint, **fast())
    fake.script("CVProcess", (status, gateway_error(code, status)))
    response = session.post(PROCESS, json={"req_key": "x"})
    assert fake.hits() == requests_seen
    assert response.status_code == (200 if requests_seen == 2 else status)


def test_rate_limit_code_waits_like_429(fake: FakeVisual) -> None:
    """50429 with a Retry-After-less answer waits the backoff before the retry, as a 429."""
    recorder = Recorder()
    session = photo_session(AK, SK, endpoint=fake.endpoint, backoff_base=0.02,
                            backoff_max=0.05, sleep=recorder.sleep, hooks=(recorder,))
    fake.script("CVProcess", (429, visual_error(50429)))
    assert session.post(PROCESS, json={"req_key": "x"}).json()["code"] == 10000
    assert recorder.waits == [0.02]
    failure = next(e for e in recorder.events if e.kind is EventKind.FAILURE)
    assert failure.verdict.value == "rate_limit" and "50429" in (failure.reason or "")


def test_operation_names_and_service_key(fake: FakeVisual) -> None:
    """Log lines and events name requests after the Action, and the breaker key is the
    vendor's."""
    recorder = Recorder()
    session = photo_session(AK, SK, endpoint=fake.endpoint, hooks=(recorder,), **fast())
    for action in ("CVSync2AsyncSubmitTask", "CVSync2AsyncGetResult", "CVProcess", "Other"):
        session.post(f"?Action={action}&Version=2022-08-31", json={"req_key": "x"})
    starts = [e for e in recorder.events if e.kind is EventKind.START]
    assert [e.operation for e in starts[:3]] == ["生成艺术照", "查询任务状态", "生成艺术照"]
    assert starts[3].operation.startswith("POST 127.0.0.1:")
    assert {e.service for e in starts} == {"volcengine-visual"}
    english = photo_adapter(lang="en")
    assert english.policy.name_request is not None
    prepared = requests.Request("POST", fake.endpoint + "/?Action=CVProcess").prepare()
    assert english.operation_for(prepared) == "generate art photo"


def test_submission_retry_can_be_turned_off(fake: FakeVisual) -> None:
    """With idempotent=False a submission that the server may have acted on (50500) is not
    resent, while a rate-limited one (the server did not act) still is."""
    session = photo_session(AK, SK, endpoint=fake.endpoint, idempotent=False, **fast())
    submit = "?Action=CVSync2AsyncSubmitTask&Version=2022-08-31"
    fake.script("CVSync2AsyncSubmitTask", (500, visual_error(50500)))
    assert session.post(submit, json={"req_key": "x"}).status_code == 500
    assert fake.hits() == 1
    fake.script("CVSync2AsyncSubmitTask", (429, visual_error(50429)))
    assert session.post(submit, json={"req_key": "x"}).json()["code"] == 10000
    assert fake.hits() == 3


@pytest.mark.parametrize("resign", [False, True], ids=["sdk-signs", "adapter-resigns"])
def test_legacy_visual_service_with_mounted_adapter(fake: FakeVisual, resign: bool) -> None:
    """The volcengine SDK's VisualService with photo_adapter() mounted on its session (both
    schemes) rides out a 50429: the SDK call succeeds and the server saw 2 requests."""
    service = VisualService()
    service.set_ak(AK)
    service.set_sk(SK)
    service.set_host(f"127.0.0.1:{fake.server.port}")
    service.set_scheme("http")
    keys = {"access_key": AK, "secret_key": SK} if resign else {}
    adapter = photo_adapter(**keys, **fast())
    service.session.mount("https://", adapter)
    service.session.mount("http://", adapter)
    fake.script("CVProcess", (429, visual_error(50429)))
    result = service.cv_process({"req_key": "img2img_photoverse", "image_urls": ["u"]})
    assert result["code"] == 10000
    assert fake.hits() == 2
    assert len(fake.valid_signatures) == 2


def test_bad_configuration_is_named() -> None:
    """Missing keys, a bad endpoint or an unknown keyword fail at construction, naming it."""
    with pytest.raises(ValueError, match="secret_key"):
        photo_session(AK, "")
    with pytest.raises(ValueError, match="endpoint"):
        photo_session(AK, SK, endpoint="ftp://visual.volcengineapi.com")
    with pytest.raises(TypeError, match="retries_please"):
        photo_session(AK, SK, retries_please=3)
    with pytest.raises(ValueError, match="secret_key"):
        photo_adapter(access_key=AK)


def test_unsignable_body_is_a_clear_error() -> None:
    """A generator body cannot be signed: the signer says so instead of sending garbage."""
    prepared = requests.Request("POST", "https://visual.volcengineapi.com/",
                                data=(b"x" for _ in range(2))).prepare()
    with pytest.raises(TypeError, match="VolcengineSigner can sign only bytes"):
        VolcengineSigner(AK, SK).sign(prepared)


def test_session_token_signature_equals_sdk() -> None:
    """With an STS session token the signature (token header signed) equals the SDK's."""
    prepared = requests.Request("POST", "https://visual.volcengineapi.com/" + PROCESS,
                                data=b"{}", headers={"Content-Type": "application/json"}
                                ).prepare()
    VolcengineSigner(AK, SK, session_token="STStoken", clock=FIXED.timestamp).sign(prepared)
    param = SignParam()
    param.set_method("POST")
    param.set_path("/")
    param.set_query(OrderedDict([("Action", "CVProcess"), ("Version", "2022-08-31")]))
    param.set_body(b"{}")
    param.set_header_list(OrderedDict([("Content-Type", "application/json"),
                                       ("Host", "visual.volcengineapi.com")]))
    param.set_date(FIXED)
    expected = SignerV4.sign_only(param, Credentials(AK, SK, "cv", "cn-north-1", "STStoken"))
    assert prepared.headers["X-Security-Token"] == "STStoken"
    assert prepared.headers["Authorization"] == expected.authorization


def test_photo_policy_pickles() -> None:
    """The photo policy (signer, classifier, names) survives pickling and still signs."""
    policy = pickle.loads(pickle.dumps(photo_adapter(AK, SK).policy))
    assert policy.prepare_attempt is not None and policy.service == "volcengine-visual"
    prepared = policy.prepare_attempt(
        requests.Request("GET", "https://example.com/?Action=CVProcess").prepare(), 1)
    assert prepared is not None
    assert prepared.headers["Authorization"].startswith(f"HMAC-SHA256 Credential={AK}/")


def test_bytes_header_values_sign_as_sent() -> None:
    """A header given as bytes (requests sends it as latin-1) is signed as its text."""
    as_text = signed("https://visual.volcengineapi.com/" + PROCESS, b"{}",
                     {"Content-Type": "application/json"})
    as_bytes = signed("https://visual.volcengineapi.com/" + PROCESS, b"{}",
                      {"Content-Type": b"application/json"})  # type: ignore[dict-item]
    assert as_bytes.headers["Authorization"] == as_text.headers["Authorization"]


def test_photo_session_signs_with_sts_credentials() -> None:
    """photo_session(session_token=...) sends X-Security-Token on every attempt, signed."""
    from requests_smartretry.faultserver import FaultServer

    with FaultServer() as server:
        session = photo_session(AK, SK, session_token="STStoken", endpoint=server.url(""),
                                log=False)
        session.post("/?Action=CVProcess&Version=2022-08-31", json={"req_key": "x"})
        sent = server.received()[0]
    assert sent.headers["x-security-token"] == "STStoken"
    assert "x-security-token" in sent.headers["authorization"].lower()


# (method, path, query as sent, body): non-ASCII JSON, %-encoded UTF-8 and reserved
# characters in queries, repeated and unsorted keys, a %-encoded path.
FIVE_REQUESTS = [
    ("POST", "/", [("Action", "CVProcess"), ("Version", "2022-08-31")],
     json.dumps({"req_key": "img2img_photoverse", "prompt": "月球上的猫 🐱, 油画风格"},
                ensure_ascii=False).encode("utf-8")),
    ("POST", "/", [("Action", "CVProcess"), ("Version", "2022-08-31"), ("name", "照片 1")],
     b'{"req_key": "x"}'),
    ("GET", "/", [("Action", "CVSync2AsyncGetResult"), ("q", "a+b/c?d=e&f"), ("empty", "")],
     b""),
    ("POST", "/", [("Zeta", "1"), ("alpha", "x y"), ("alpha", "~z*"), ("Action", "CVProcess")],
     json.dumps({"image_urls": ["https://x/图 1.png"]}, ensure_ascii=False).encode("utf-8")),
    ("POST", "/a%20b/%E4%B8%AD", [("Action", "CVProcess"), ("Version", "2022-08-31")],
     "{\"text\": \"中文 ünïcödé\"}".encode()),
]


@pytest.mark.parametrize(("method", "path", "query", "body"), FIVE_REQUESTS,
                         ids=["non-ascii-json", "utf8-query", "reserved-query",
                              "repeated-keys", "encoded-path"])
def test_signature_equals_sdk_signer_v4_for_five_requests(
        method: str, path: str, query: list[tuple[str, str]], body: bytes) -> None:
    """For five requests (non-ASCII JSON, %-encoded UTF-8 and reserved characters in the
    query, repeated keys, a %-encoded path) our signature equals SignerV4's over the same
    decoded request."""
    headers = {"Content-Type": "application/json"} if body else {}
    prepared = requests.Request(method, "https://visual.volcengineapi.com" + path,
                                params=query, data=body, headers=headers).prepare()
    VolcengineSigner(AK, SK, clock=FIXED.timestamp).sign(prepared)
    sdk_query: OrderedDict[str, Any] = OrderedDict()
    for key, value in query:
        previous = sdk_query.get(key)
        sdk_query[key] = value if previous is None else (
            [*previous, value] if isinstance(previous, list) else [previous, value])
    param = SignParam()
    param.set_method(method)
    param.set_path(unquote(path))
    param.set_query(sdk_query)
    param.set_body(body)
    param.set_header_list(OrderedDict([*headers.items(), ("Host", "visual.volcengineapi.com")]))
    param.set_date(FIXED)
    expected = SignerV4.sign_only(param, Credentials(AK, SK, "cv", "cn-north-1"))
    assert prepared.headers["Authorization"] == expected.authorization
    assert prepared.headers["X-Content-Sha256"] == expected.xContextSha256


@pytest.fixture()
def visual_service() -> Iterator[VisualService]:
    """The SDK's VisualService singleton, put back as it was afterwards (it is process-wide)."""
    service = VisualService()
    yield service
    service.__class__ = VisualService
    for slot in ("_smartretry_adapter", "_smartretry_session"):
        service.__dict__.pop(slot, None)
    service.__dict__["session"] = requests.session()


def point_at(service: VisualService, fake: FakeVisual) -> None:
    service.set_ak(AK)
    service.set_sk(SK)
    service.set_host(f"127.0.0.1:{fake.server.port}")
    service.set_scheme("http")


def test_sdk_mount_survives_visual_service_called_again(
        fake: FakeVisual, visual_service: VisualService) -> None:
    """After mount_on_sdk_service, calling VisualService() again (which re-runs __init__ and
    builds a new session) keeps the adapter: a 50429 is still retried, while an adapter
    mounted by hand is gone after the second VisualService()."""
    point_at(visual_service, fake)
    adapter = photo_adapter(**fast())
    visual_service.session.mount("http://", adapter)
    again = VisualService()
    assert again is visual_service and again.session.get_adapter("http://x") is not adapter

    mount_on_sdk_service(visual_service, adapter)
    again = VisualService()
    assert again is visual_service and isinstance(again, VisualService)
    assert again.session.get_adapter("http://visual.volcengineapi.com/") is adapter
    assert again.session.get_adapter("https://x/") is not adapter  # the origin only
    point_at(again, fake)  # __init__ reset the SDK's keys and host as well
    assert again.session.get_adapter(fake.server.url("/")) is adapter  # set_host followed
    fake.script("CVProcess", (429, visual_error(50429)))
    assert again.cv_process({"req_key": "x"})["code"] == 10000
    assert fake.hits() == 2


def stale_sdk_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK signs with an X-Date 10 minutes old (a slow queue, a skewed clock)."""
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=10)
    monkeypatch.setattr(SignerV4, "get_current_format_date",
                        staticmethod(lambda: old.strftime("%Y%m%dT%H%M%SZ")))


def test_invalid_timestamp_with_the_sdks_signature_is_final(
        fake: FakeVisual, visual_service: VisualService, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Without keys the adapter cannot sign again: a real InvalidTimestamp for the SDK's
    stale signature is not retried (one request) and the log line says the caller's
    signature is stale."""
    stale_sdk_signature(monkeypatch)
    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    mount_on_sdk_service(visual_service, photo_adapter(lang="en", **fast()))
    point_at(visual_service, fake)
    with pytest.raises(Exception, match="InvalidTimestamp"):
        visual_service.cv_process({"req_key": "x"})
    assert fake.hits() == 1
    assert "InvalidTimestamp: the caller's signature is stale" in caplog.text


def test_invalid_timestamp_is_retried_when_the_adapter_signs(
        fake: FakeVisual, visual_service: VisualService,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With keys the adapter signs every attempt: an attempt refused as InvalidTimestamp is
    signed again with a fresh X-Date and succeeds (two requests)."""
    stale_sdk_signature(monkeypatch)
    times = iter([time.time() - 600])  # the first attempt's clock is 10 minutes behind
    adapter = photo_adapter(AK, SK, sign_clock=lambda: next(times, time.time()), **fast())
    mount_on_sdk_service(visual_service, adapter)
    point_at(visual_service, fake)
    assert visual_service.cv_process({"req_key": "x"})["code"] == 10000
    assert fake.hits() == 2 and len(fake.valid_signatures) == 1
