"""WeChat Pay v3 preset: RSA signing checked against wechatpayv3, the code table, order
idempotency by out_trade_no, and backup-domain failover."""

from __future__ import annotations

import base64
import itertools
import pickle
import re
import time
import types
from typing import Any

import pytest
import requests
import wechatpayv3.utils
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.hashes import SHA256

from requests_smartretry import (
    AttemptEvent,
    EventKind,
    attempt_history,
    payment_adapter,
    payment_session,
)
from requests_smartretry.faultserver import unused_port
from requests_smartretry.presets import WechatPaySigner
from tests.fakes.wechatpay import JSAPI, FakeWechatPay, pay_error

MCHID, SERIAL = "1900000001", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture()
def fake(key: rsa.RSAPrivateKey):
    with FakeWechatPay(key.public_key(), MCHID) as server:
        yield server


def fast(**extra: Any) -> dict[str, Any]:
    """Preset options for tests: tiny backoff, no real sleeping."""
    return {"backoff_base": 0.01, "backoff_max": 0.05, "sleep": lambda s: None, **extra}


def order(out_trade_no: str | None = "ORDER-0001") -> dict[str, Any]:
    body: dict[str, Any] = {"appid": "wxd678efh567hg6787", "mchid": MCHID,
                            "description": "艺术照套餐", "notify_url": "https://x.example/n",
                            "amount": {"total": 990, "currency": "CNY"},
                            "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}}
    if out_trade_no is not None:
        body["out_trade_no"] = out_trade_no
    return body


def test_authorization_equals_wechatpayv3(pem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """For the same request, key, time and nonce our Authorization header is byte-for-byte
    what wechatpayv3 builds (so the signed string is the same), and it verifies."""
    stamp, nonce = 1_795_000_000, "593BEC0C930BF1AFEB40B4A08C8FB242"
    signer = WechatPaySigner(MCHID, SERIAL, pem, clock=lambda: stamp, nonce=lambda: nonce)
    prepared = requests.Request("POST", "https://api.mch.weixin.qq.com" + JSAPI,
                                json=order()).prepare()
    signer.sign(prepared)
    monkeypatch.setattr(wechatpayv3.utils, "time", types.SimpleNamespace(time=lambda: stamp))
    theirs = wechatpayv3.utils.build_authorization(
        JSAPI, "POST", MCHID, SERIAL, wechatpayv3.utils.load_private_key(pem), data=order(),
        nonce_str=nonce)
    assert prepared.headers["Authorization"] == theirs
    signature = re.search(r'signature="([^"]+)"', theirs)
    assert signature is not None
    message = f"POST\n{JSAPI}\n{stamp}\n{nonce}\n".encode() + prepared.body + b"\n"
    wechatpayv3.utils.load_private_key(pem).public_key().verify(
        base64.b64decode(signature[1]), message, PKCS1v15(), SHA256())


def test_get_with_query_signs_path_and_query(pem: str, key: rsa.RSAPrivateKey) -> None:
    """A GET signs PATH?QUERY and an empty body, as the vendor specifies."""
    signer = WechatPaySigner(MCHID, SERIAL, key, clock=lambda: 1_795_000_000,
                             nonce=lambda: "N1")
    prepared = requests.Request(
        "GET", "https://api.mch.weixin.qq.com/v3/pay/transactions/id/42?mchid=1900000001"
    ).prepare()
    signer.sign(prepared)
    signature = re.search(r'signature="([^"]+)"', prepared.headers["Authorization"])
    assert signature is not None
    key.public_key().verify(
        base64.b64decode(signature[1]),
        b"GET\n/v3/pay/transactions/id/42?mchid=1900000001\n1795000000\nN1\n\n",
        PKCS1v15(), SHA256())


def test_two_attempts_carry_fresh_nonce_and_timestamp(pem: str, fake: FakeWechatPay) -> None:
    """A retried order is signed afresh (new nonce and timestamp) and both verify; a
    replayed nonce would have been refused by the fake."""
    start = int(time.time())
    ticks = itertools.count()
    session = payment_session(MCHID, SERIAL, pem, endpoint=fake.endpoint, backup_endpoint=None,
                              sign_clock=lambda: start + next(ticks), **fast())
    fake.script(JSAPI, (500, pay_error("SYSTEM_ERROR")))
    assert session.post(JSAPI, json=order()).json()["prepay_id"]
    first, second = fake.verified
    assert first["nonce_str"] != second["nonce_str"]
    assert first["timestamp"] != second["timestamp"]


PAY_ROWS = [
    *[(500, code, 2) for code in ("SYSTEM_ERROR", "SYSTEMERROR", "BANK_ERROR", "BANKERROR")],
    (429, "FREQUENCY_LIMITED", 2),
    (500, "OPENID_MISMATCH", 1),
    (500, "INVALID_TRANSACTIONID", 1),
    *[(400, code, 1) for code in ("PARAM_ERROR", "INVALID_REQUEST", "APPID_MCHID_NOT_MATCH",
                                  "MCH_NOT_EXISTS", "ORDER_CLOSED")],
    (401, "SIGN_ERROR", 1),
    *[(403, code, 1) for code in ("NO_AUTH", "NOAUTH", "OUT_TRADE_NO_USED", "RULE_LIMIT",
                                  "RULELIMIT", "TRADE_ERROR", "ACCOUNT_ERROR", "NOTENOUGH")],
    (404, "ORDER_NOT_EXIST", 1),
]


@pytest.mark.parametrize(("status", "code", "requests_seen"), PAY_ROWS)
def test_vendor_code_table(pem: str, fake: FakeWechatPay, status: int, code: str,
                           requests_seen: int) -> None:
    """Each row of the vendor's code table: retried codes reach the server twice and end in
    one order, the rest once and come back as the vendor's answer."""
    session = payment_session(MCHID, SERIAL, pem, endpoint=fake.endpoint, backup_endpoint=None,
                              **fast())
    fake.script(JSAPI, (status, pay_error(code)))
    response = session.post(JSAPI, json=order())
    assert fake.hits() == requests_seen
    if requests_seen == 2:
        assert response.status_code == 200 and len(fake.orders) == 1
    else:
        assert response.status_code == status and response.json()["code"] == code


def test_order_without_out_trade_no_is_not_resent_after_reset(
        pem: str, fake: FakeWechatPay) -> None:
    """An order POST without out_trade_no that the server received before the connection
    broke is not resent: the caller sees the ConnectionError, the fake one order."""
    session = payment_session(MCHID, SERIAL, pem, endpoint=fake.endpoint, backup_endpoint=None,
                              **fast())
    fake.script(JSAPI, "reset")
    with pytest.raises(requests.ConnectionError) as caught:
        session.post(JSAPI, json=order(out_trade_no=None))
    assert fake.hits() == 1 and len(fake.orders) == 1
    give_up = attempt_history(caught.value)[-1]
    assert give_up.reason == "ECONNRESET" and give_up.give_up_reason == "unsafe"


def test_order_with_out_trade_no_is_resent_identically(pem: str, fake: FakeWechatPay) -> None:
    """With out_trade_no the order is resent with the same body and the fake counts one
    order (the vendor's idempotency rule)."""
    session = payment_session(MCHID, SERIAL, pem, endpoint=fake.endpoint, backup_endpoint=None,
                              **fast())
    fake.script(JSAPI, "reset")
    response = session.post(JSAPI, json=order("ORDER-0002"))
    assert response.status_code == 200 and response.json()["prepay_id"]
    first, second = fake.server.received(JSAPI)
    assert first.body == second.body
    assert len(fake.orders) == 1


def test_failover_to_backup_when_primary_refuses(pem: str, fake: FakeWechatPay) -> None:
    """With the primary domain refusing connections, the retry goes to the backup domain."""
    events: list[AttemptEvent] = []
    primary = f"http://127.0.0.1:{unused_port()}"
    session = payment_session(MCHID, SERIAL, pem, endpoint=primary,
                              backup_endpoint=fake.endpoint, hooks=(events.append,), **fast())
    response = session.post(JSAPI, json=order(out_trade_no=None))
    assert response.status_code == 200
    assert fake.hits() == 1 and len(fake.orders) == 1
    failure = next(e for e in events if e.kind is EventKind.FAILURE)
    assert failure.reason == "ECONNREFUSED"
    assert {e.operation for e in events} == {"微信支付下单"}
    assert {e.service for e in events} == {"wechatpay"}


def test_failover_can_be_turned_off(pem: str, fake: FakeWechatPay) -> None:
    """backup_endpoint=None keeps every attempt on the primary domain."""
    primary = f"http://127.0.0.1:{unused_port()}"
    session = payment_session(MCHID, SERIAL, pem, endpoint=primary, backup_endpoint=None,
                              **fast())
    with pytest.raises(requests.ConnectionError):
        session.post(JSAPI, json=order())
    assert fake.hits() == 0


def test_overridden_endpoint_has_no_production_backup(pem: str, fake: FakeWechatPay) -> None:
    """An endpoint other than production (staging, a mock) gets no backup unless one is
    given: a timed-out signed order is never sent to WeChat Pay's production backup."""
    fake.script(JSAPI, ("hang", 10))
    for build in (payment_session, payment_adapter):
        made: Any = build(MCHID, SERIAL, pem, endpoint=fake.endpoint)  # type: ignore[operator]
        adapter = made.get_adapter(fake.endpoint + "/") if isinstance(made, requests.Session) \
            else made
        preparer = adapter.policy.prepare_attempt
        assert preparer.backup is None and preparer.primary is None
    session = payment_session(MCHID, SERIAL, pem, endpoint=fake.endpoint, timeout=0.3, **fast())
    assert not any("api2" in prefix for prefix in session.adapters)
    assert session.post(JSAPI, json=order("ORDER-0009")).status_code == 200
    assert fake.hits() == 2  # the retry after the timeout stayed on the configured endpoint
    production = payment_adapter(MCHID, SERIAL, pem).policy.prepare_attempt
    assert production.backup == "https://api2.mch.weixin.qq.com"  # type: ignore[union-attr]


def test_failover_to_backup_after_attempt_timeout(pem: str, key: rsa.RSAPrivateKey) -> None:
    """An attempt that times out on the primary is retried on the backup (an order with
    out_trade_no, so the repeat is safe)."""
    with FakeWechatPay(key.public_key(), MCHID) as primary, \
            FakeWechatPay(key.public_key(), MCHID) as backup:
        primary.script(JSAPI, ("hang", 10))
        session = payment_session(MCHID, SERIAL, pem, endpoint=primary.endpoint,
                                  backup_endpoint=backup.endpoint, timeout=0.5, **fast())
        response = session.post(JSAPI, json=order("ORDER-0003"))
        assert response.status_code == 200
        assert primary.hits() == 1 and backup.hits() == 1 and len(backup.orders) == 1


def test_adapter_without_credentials_classifies_only(fake: FakeWechatPay, pem: str) -> None:
    """payment_adapter() with credentials mounted on a plain session signs each attempt;
    breaker/budget/hooks keywords reach the adapter."""
    seen: list[AttemptEvent] = []
    adapter = payment_adapter(MCHID, SERIAL, pem, endpoint=fake.endpoint,
                              backup_endpoint=None, hooks=(seen.append,), **fast())
    assert adapter.policy.service == "wechatpay"
    assert adapter.extra_hooks == (seen.append,)
    session = requests.Session()
    session.mount(fake.endpoint + "/", adapter)
    fake.script(JSAPI, (429, pay_error("FREQUENCY_LIMITED")))
    assert session.post(fake.endpoint + JSAPI, json=order()).status_code == 200
    assert len(fake.verified) == 2 and seen


def test_bad_configuration_is_named(pem: str) -> None:
    """A bad key, a missing serial number or a bad backup endpoint fail at construction,
    naming what was wrong."""
    with pytest.raises(ValueError, match="private_key"):
        payment_session(MCHID, SERIAL, "not a pem")
    with pytest.raises(ValueError, match="serial_no"):
        payment_session(MCHID, "", pem)
    with pytest.raises(ValueError, match="backup_endpoint"):
        payment_session(MCHID, SERIAL, pem, backup_endpoint="api2.mch.weixin.qq.com")
    with pytest.raises(ValueError, match="nonce"):
        WechatPaySigner(MCHID, SERIAL, pem, nonce=lambda: "").sign(
            requests.Request("GET", "https://api.mch.weixin.qq.com/v3/x").prepare())


def test_signer_survives_pickling(pem: str, key: rsa.RSAPrivateKey) -> None:
    """A pickled payment policy (as a pickled session carries it) still signs validly."""
    adapter = payment_adapter(MCHID, SERIAL, pem)
    policy = pickle.loads(pickle.dumps(adapter.policy))
    assert policy.prepare_attempt is not None
    prepared = policy.prepare_attempt(
        requests.Request("GET", "https://api.mch.weixin.qq.com/v3/x").prepare(), 1)
    assert prepared is not None
    fields = dict(re.findall(r'(\w+)="([^"]*)"', prepared.headers["Authorization"]))
    key.public_key().verify(
        base64.b64decode(fields["signature"]),
        f"GET\n/v3/x\n{fields['timestamp']}\n{fields['nonce_str']}\n\n".encode(), PKCS1v15(),
        SHA256())


def test_requests_follow_the_vendors_header_rules(pem: str, fake: FakeWechatPay) -> None:
    """Every attempt asks for JSON (Accept: application/json, not requests' */*), a body
    goes as Content-Type: application/json, a GET carries no Content-Type, a caller's own
    Accept is kept, and without a platform key id no Wechatpay-Serial is sent."""
    session = payment_session(MCHID, SERIAL, pem, endpoint=fake.endpoint, backup_endpoint=None,
                              **fast())
    session.post(JSAPI, data=b'{"out_trade_no": "ORDER-9"}')
    session.get("/v3/pay/transactions/id/42?mchid=1900000001")
    session.get("/v3/bill", headers={"Accept": "text/plain"})
    posted, got, custom = fake.server.received()
    assert posted.headers["accept"] == got.headers["accept"] == "application/json"
    assert posted.headers["content-type"] == "application/json"
    assert "content-type" not in got.headers
    assert custom.headers["accept"] == "text/plain"
    assert not any("wechatpay-serial" in r.headers for r in (posted, got, custom))
