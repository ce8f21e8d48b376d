"""WeChat Pay platform side: every 2xx verified against the platform key (and checked against
wechatpayv3 on the same answers), notify_url notifications verified and decrypted."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import time
from pathlib import Path
from typing import Any, Optional

import pytest
import requests
import wechatpayv3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from requests_smartretry import (
    EventKind,
    ResponseSignatureError,
    SmartRetryError,
    attempt_history,
    payment_adapter,
    payment_session,
)
from requests_smartretry.faultserver import FaultServer, unused_port
from requests_smartretry.presets import wechatpay as wechatpay_preset
from requests_smartretry.presets.wechatpay import PlatformVerifier, parse_notification
from tests.fakes.wechatpay import (
    FORGERIES,
    JSAPI,
    PUBLIC_KEY_ID,
    FakeWechatPay,
    forge,
    new_key,
    notification,
    pay_error,
    platform_certificate,
    platform_headers,
    public_pem,
)

MCHID, SERIAL = "1900000001", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
API_V3_KEY = "0123456789abcdefABCDEF0123456789"
CERT_SERIALS = (0x3775B6A45ACD588826AAE8C7, 0x5C8D2E1F0A3B4C5D6E7F8091)
CHECK_OF = {"tampered": "signature", "unsigned": "unsigned", "wrong_key": "signature",
            "unknown_serial": "serial", "stale": "timestamp"}


@pytest.fixture(scope="module")
def merchant() -> RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def merchant_pem(merchant: RSAPrivateKey) -> str:
    return merchant.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def platform() -> RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def second_platform() -> RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def intruder() -> RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def certificates(platform: RSAPrivateKey, second_platform: RSAPrivateKey) -> dict[str, str]:
    """Two platform certificates, serial (hex, as Wechatpay-Serial carries it) -> PEM."""
    return {f"{serial:X}": platform_certificate(key, serial)
            for serial, key in zip(CERT_SERIALS, (platform, second_platform))}


@pytest.fixture()
def fake(merchant: RSAPrivateKey, platform: RSAPrivateKey, intruder: RSAPrivateKey):
    with FakeWechatPay(merchant.public_key(), MCHID, platform_key=platform,
                       other_key=intruder) as server:
        yield server


def fast(**extra: Any) -> dict[str, Any]:
    """Preset options for tests: tiny backoff, no real sleeping, failover off."""
    return {"backoff_base": 0.01, "backoff_max": 0.05, "sleep": lambda s: None,
            "backup_endpoint": None, **extra}


def order(out_trade_no: str = "ORDER-0001") -> dict[str, Any]:
    return {"appid": "wxd678efh567hg6787", "mchid": MCHID, "description": "艺术照套餐",
            "out_trade_no": out_trade_no, "notify_url": "https://x.example/n",
            "amount": {"total": 990, "currency": "CNY"}, "payer": {"openid": "oUpF8uMuAJO"}}


def verified_session(merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey,
                     **extra: Any) -> requests.Session:
    return payment_session(MCHID, SERIAL, merchant_pem, endpoint=fake.endpoint,
                           platform_public_key=public_pem(platform),
                           platform_public_key_id=PUBLIC_KEY_ID, **fast(**extra))


# -- responses -------------------------------------------------------------------------------


def test_valid_signature_is_accepted_and_headers_follow_the_rules(
        merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey) -> None:
    """A platform-signed 2xx is returned as usual after one request, which carried Accept
    and Content-Type application/json and the platform key id as Wechatpay-Serial."""
    session = verified_session(merchant_pem, fake, platform)
    response = session.post(JSAPI, json=order())
    assert response.status_code == 200 and response.json()["prepay_id"].startswith("wx-prepay-")
    (sent,) = fake.server.received(JSAPI)
    assert sent.headers["accept"] == "application/json"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["wechatpay-serial"] == PUBLIC_KEY_ID


@pytest.mark.parametrize("mode", FORGERIES)
def test_forged_answer_raises_after_one_request(
        merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey, mode: str) -> None:
    """A tampered, unsigned, wrongly keyed, unknown-serial or stale 2xx raises
    ResponseSignatureError naming the failed check, after exactly one request (even with
    retries to spare), with the attempt recorded as a permanent failure."""
    session = verified_session(merchant_pem, fake, platform, max_retries=3)
    fake.forge(mode)
    with pytest.raises(ResponseSignatureError) as caught:
        session.post(JSAPI, json=order())
    assert fake.hits() == 1
    error = caught.value
    assert isinstance(error, SmartRetryError) and error.check == CHECK_OF[mode]
    assert error.response is not None and error.response.status_code == 200
    failure = next(e for e in attempt_history(error) if e.kind is EventKind.FAILURE)
    assert failure.verdict is not None and failure.verdict.value == "permanent"
    assert attempt_history(error)[-1].give_up_reason == "not_retryable"


def test_non_2xx_is_classified_as_before(
        merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey) -> None:
    """Only 2xx answers are verified: an unsigned 500 SYSTEM_ERROR is retried as always, and
    the unsigned 200 that follows is refused."""
    session = verified_session(merchant_pem, fake, platform)
    fake.forge("unsigned")
    fake.script(JSAPI, (500, pay_error("SYSTEM_ERROR")))
    with pytest.raises(ResponseSignatureError, match="unsigned"):
        session.post(JSAPI, json=order())
    assert fake.hits() == 2


def test_certificate_mode_picks_the_certificate_by_serial(
        merchant: RSAPrivateKey, merchant_pem: str, platform: RSAPrivateKey,
        second_platform: RSAPrivateKey, certificates: dict[str, str]) -> None:
    """With two platform certificates, an answer signed by either is accepted when its
    Wechatpay-Serial names the matching certificate, and refused when it names the other."""
    first, second = (f"{serial:X}" for serial in CERT_SERIALS)
    for key, serial in ((platform, first), (second_platform, second), (platform, second)):
        with FakeWechatPay(merchant.public_key(), MCHID, platform_key=key,
                           platform_serial=serial) as server:
            session = payment_session(MCHID, SERIAL, merchant_pem, endpoint=server.endpoint,
                                      platform_certificates=certificates, **fast())
            if key is platform and serial == second:
                with pytest.raises(ResponseSignatureError) as caught:
                    session.post(JSAPI, json=order())
                assert caught.value.check == "signature"
            else:
                assert session.post(JSAPI, json=order()).status_code == 200
            assert "wechatpay-serial" not in server.server.received()[0].headers
            assert server.hits() == 1


def test_unsigned_downloads_are_not_verified(
        merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey) -> None:
    """A bill download (which WeChat Pay does not sign, and the SDK does not verify) is
    returned even when unsigned; an unsigned order answer on the same session is not."""
    session = verified_session(merchant_pem, fake, platform)
    fake.forge("unsigned")
    fake.script("/v3/billdownload/file", (200, {"bill": "..."}))
    assert session.get("/v3/billdownload/file?token=T").json() == {"bill": "..."}
    with pytest.raises(ResponseSignatureError):
        session.post(JSAPI, json=order())


def test_without_platform_keys_a_single_warning(
        merchant_pem: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Building payment sessions without platform keys warns once per process that
    responses are not verified; with keys it says nothing."""
    monkeypatch.setattr(wechatpay_preset, "_unverified_warned", type(
        wechatpay_preset._unverified_warned)())
    caplog.set_level(logging.WARNING, logger="requests_smartretry")
    payment_session(MCHID, SERIAL, merchant_pem)
    payment_adapter()
    warnings = [r for r in caplog.records if "NOT verified" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_verifier_survives_pickling(
        merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey,
        certificates: dict[str, str]) -> None:
    """A pickled payment adapter keeps its platform keys: it still accepts a signed answer
    and still refuses a forged one."""
    adapter = payment_adapter(MCHID, SERIAL, merchant_pem, endpoint=fake.endpoint,
                              platform_public_key=public_pem(platform),
                              platform_public_key_id=PUBLIC_KEY_ID,
                              platform_certificates=certificates, backup_endpoint=None)
    copy = pickle.loads(pickle.dumps(adapter))
    session = requests.Session()
    session.mount(fake.endpoint + "/", copy)
    assert session.post(fake.endpoint + JSAPI, json=order()).status_code == 200
    fake.forge("wrong_key")
    with pytest.raises(ResponseSignatureError):
        session.post(fake.endpoint + JSAPI, json=order())


def test_bad_platform_configuration_is_named(
        merchant_pem: str, platform: RSAPrivateKey, certificates: dict[str, str]) -> None:
    """Platform keys are checked at construction and each mistake names the parameter."""
    pem = public_pem(platform)
    first = next(iter(certificates))
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"platform_public_key": "not a pem", "platform_public_key_id": PUBLIC_KEY_ID},
         ValueError, "platform_public_key is not a readable PEM public key"),
        ({"platform_public_key_id": PUBLIC_KEY_ID}, ValueError, "without platform_public_key"),
        ({"platform_public_key": pem}, ValueError, "needs platform_public_key_id"),
        ({"platform_public_key": pem, "platform_public_key_id": SERIAL}, ValueError,
         "PUB_KEY_ID_"),
        ({"platform_public_key": merchant_pem, "platform_public_key_id": PUBLIC_KEY_ID},
         ValueError, "is a private key"),
        ({"platform_certificates": {"ABCDEF": certificates[first]}}, ValueError,
         "not 'ABCDEF'"),
        ({"platform_certificates": {"zz": certificates[first]}}, ValueError, "not a hex"),
        ({"platform_certificates": {first: "junk"}}, ValueError, "not a readable PEM cert"),
        ({"platform_certificates": [certificates[first]]}, TypeError, "mapping"),
    ]
    for kwargs, kind, message in cases:
        with pytest.raises(kind, match=message):
            payment_session(MCHID, SERIAL, merchant_pem, **kwargs)


def test_signature_type_other_than_rsa_is_refused(platform: RSAPrivateKey) -> None:
    """An answer that says it is signed with another algorithm (SM2) is refused by name."""
    verifier = PlatformVerifier(public_key=public_pem(platform), public_key_id=PUBLIC_KEY_ID)
    body = b'{"prepay_id": "wx1"}'
    headers = {**platform_headers(platform, PUBLIC_KEY_ID, body),
               "Wechatpay-Signature-Type": "WECHATPAY2-SM2-WITH-SM3"}
    with pytest.raises(ResponseSignatureError) as caught:
        verifier.verify(headers, body)
    assert caught.value.check == "signature_type"


def test_no_secret_reaches_logs_or_exception_text(
        merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey,
        caplog: pytest.LogCaptureFixture) -> None:
    """Neither the merchant key, the APIv3 key, the signatures nor the Wechatpay-* values
    of a refused answer or notification appear in any log line or exception text."""
    caplog.set_level(logging.DEBUG)
    session = verified_session(merchant_pem, fake, platform)
    fake.forge("tampered")
    with pytest.raises(ResponseSignatureError) as refused:
        session.post(JSAPI, json=order())
    answer = refused.value.response
    assert answer is not None
    body = notification({"out_trade_no": "ORDER-0001"}, API_V3_KEY)
    with pytest.raises(ResponseSignatureError) as undecryptable:
        parse_notification(platform_headers(platform, PUBLIC_KEY_ID, body), body,
                           platform_public_key=public_pem(platform),
                           api_v3_key=API_V3_KEY[::-1])
    (sent,) = fake.server.received(JSAPI)
    secrets = [answer.headers["Wechatpay-Signature"], answer.headers["Wechatpay-Nonce"],
               sent.headers["authorization"].split('signature="')[1].split('"')[0],
               API_V3_KEY, API_V3_KEY[::-1], *merchant_pem.splitlines()[1:-1]]
    texts = [caplog.text, str(refused.value), repr(refused.value),
             str(undecryptable.value), repr(undecryptable.value),
             repr(session.get_adapter(fake.endpoint + "/"))]
    for secret in secrets:
        for text in texts:
            assert secret not in text
    assert "signature check" in caplog.text  # the refusal itself was logged


# -- the same answers through wechatpayv3 ----------------------------------------------------


def sdk_client(merchant_pem: str, endpoint: str, *, public_key: Optional[str] = None,
               cert_dir: Optional[Path] = None) -> wechatpayv3.WeChatPay:
    """wechatpayv3 pointed at a fake: public-key mode, or certificates read from cert_dir
    (so that building it touches no network)."""
    keys: dict[str, Any] = ({"public_key": public_key, "public_key_id": PUBLIC_KEY_ID}
                            if public_key else {"cert_dir": str(cert_dir)})
    client = wechatpayv3.WeChatPay(
        wechatpay_type=wechatpayv3.WeChatPayType.JSAPI, mchid=MCHID, private_key=merchant_pem,
        cert_serial_no=SERIAL, appid="wxd678efh567hg6787", apiv3_key=API_V3_KEY,
        notify_url="https://x.example/n", timeout=(5, 5), **keys)
    client._core._gate_way = endpoint  # the SDK has no gateway parameter
    return client


def refused() -> str:
    """A loopback base URL where nothing listens (the SDK's certificate downloads fail)."""
    return f"http://127.0.0.1:{unused_port()}"


def sdk_accepts(client: wechatpayv3.WeChatPay) -> bool:
    data = order()
    try:
        code, _ = client.pay(description=data["description"], out_trade_no=data["out_trade_no"],
                             amount=data["amount"], payer=data["payer"])
    except Exception:
        return False  # wechatpayv3 raises a bare Exception for a failed verification
    return bool(code == 200)


def ours_accept(session: requests.Session) -> bool:
    try:
        return session.post(JSAPI, json=order()).status_code == 200
    except ResponseSignatureError:
        return False


@pytest.mark.parametrize("mode", [None, *FORGERIES])
@pytest.mark.parametrize("key_mode", ["public_key", "certificates"])
def test_verification_agrees_with_wechatpayv3(
        merchant: RSAPrivateKey, merchant_pem: str, platform: RSAPrivateKey,
        intruder: RSAPrivateKey, certificates: dict[str, str], tmp_path: Path,
        mode: Optional[str], key_mode: str) -> None:
    """On the same answers our verification accepts what wechatpayv3 accepts and refuses
    what it refuses, in both key modes; the one difference is the stale timestamp, which
    the SDK does not check and the vendor's documentation says to refuse."""
    serial = PUBLIC_KEY_ID if key_mode == "public_key" else f"{CERT_SERIALS[0]:X}"
    for name, pem in certificates.items():
        (tmp_path / f"{name}.pem").write_text(pem)
    verdicts = []
    for client in ("sdk", "ours"):
        with FakeWechatPay(merchant.public_key(), MCHID, platform_key=platform,
                           platform_serial=serial, other_key=intruder) as fake:
            fake.forge(mode)
            if key_mode == "public_key":
                keys: dict[str, Any] = {"platform_public_key": public_pem(platform),
                                        "platform_public_key_id": PUBLIC_KEY_ID}
            else:
                keys = {"platform_certificates": certificates}
            if client == "sdk":
                verdicts.append(sdk_accepts(sdk_client(
                    merchant_pem, fake.endpoint,
                    public_key=keys.get("platform_public_key"), cert_dir=tmp_path)))
            else:
                session = payment_session(MCHID, SERIAL, merchant_pem, endpoint=fake.endpoint,
                                          **keys, **fast())
                verdicts.append(ours_accept(session))
    sdk, ours = verdicts
    assert ours is (mode is None)
    assert sdk is (mode in (None, "stale"))


# -- notifications ---------------------------------------------------------------------------

PAID = {"mchid": MCHID, "appid": "wxd678efh567hg6787", "out_trade_no": "ORDER-0001",
        "transaction_id": "4200000000202612010000000001", "trade_type": "JSAPI",
        "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
        "success_time": "2026-12-01T10:00:00+08:00", "payer": {"openid": "oUpF8uMuAJO"},
        "amount": {"total": 990, "payer_total": 990, "currency": "CNY"}}


def test_notification_decrypts_to_what_the_sdk_returns(
        merchant_pem: str, platform: RSAPrivateKey) -> None:
    """A notification built and encrypted the way WeChat Pay does decrypts to the same dict
    that wechatpayv3's callback helper returns as its resource (and to what was sent)."""
    body = notification(PAID, API_V3_KEY)
    headers = platform_headers(platform, PUBLIC_KEY_ID, body)
    ours = parse_notification(headers, body, platform_public_key=public_pem(platform),
                              platform_public_key_id=PUBLIC_KEY_ID, api_v3_key=API_V3_KEY)
    sdk = sdk_client(merchant_pem, refused(), public_key=public_pem(platform))
    theirs = sdk.callback(headers, body)
    assert theirs is not None
    assert ours == theirs["resource"] == PAID


def test_notification_from_a_wsgi_environ_and_text_body(platform: RSAPrivateKey,
                                                         certificates: dict[str, str],
                                                         second_platform: RSAPrivateKey) -> None:
    """Headers as a WSGI/Django environ (HTTP_WECHATPAY_*) and a str body work too, in
    certificate mode with the second certificate."""
    body = notification(PAID, API_V3_KEY)
    serial = f"{CERT_SERIALS[1]:X}"
    environ = {f"HTTP_{name.upper().replace('-', '_')}": value
               for name, value in platform_headers(second_platform, serial, body).items()}
    assert parse_notification(environ, body.decode(), platform_certificates=certificates,
                              api_v3_key=API_V3_KEY) == PAID


@pytest.mark.parametrize(("mode", "check"), [
    *CHECK_OF.items(), ("wrong_api_v3_key", "decryption"), ("altered_ciphertext", "decryption"),
])
def test_bad_notification_names_the_failed_check(
        merchant_pem: str, platform: RSAPrivateKey, intruder: RSAPrivateKey, mode: str,
        check: str) -> None:
    """A notification that is tampered, unsigned, wrongly keyed, from an unknown serial,
    stale, or does not decrypt raises ResponseSignatureError naming that check; the SDK
    gives no resource for the signature failures."""
    body = notification(PAID, API_V3_KEY)
    if mode == "altered_ciphertext":
        envelope = json.loads(body)
        sealed = bytearray(base64.b64decode(envelope["resource"]["ciphertext"]))
        sealed[0] ^= 1
        envelope["resource"]["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
        body = json.dumps(envelope).encode()
    forgery = mode if mode in FORGERIES else None
    body, headers = forge(forgery, platform, PUBLIC_KEY_ID, body, intruder)
    if mode == "tampered":
        body = body.replace(b"encrypt-resource", b"encrypt-resourcE")
    key = API_V3_KEY[::-1] if mode == "wrong_api_v3_key" else API_V3_KEY
    with pytest.raises(ResponseSignatureError) as caught:
        parse_notification(headers, body, platform_public_key=public_pem(platform),
                           platform_public_key_id=PUBLIC_KEY_ID, api_v3_key=key)
    assert caught.value.check == check and f"({check} check)" in str(caught.value)
    if check in ("signature", "serial", "unsigned"):
        sdk = sdk_client(merchant_pem, refused(), public_key=public_pem(platform))
        try:
            assert sdk.callback(headers, body) is None
        except requests.ConnectionError:  # an unknown serial: it tried to fetch certificates
            assert mode == "unknown_serial"
        except Exception as exc:  # the SDK raises for a missing signature type
            assert "algorithm" in str(exc)


def test_notification_configuration_errors_are_named(platform: RSAPrivateKey) -> None:
    """An APIv3 key that is not 32 bytes, no platform key, or a non-bytes body fail with a
    ValueError/TypeError naming the parameter (and never showing the key)."""
    body = notification(PAID, API_V3_KEY)
    headers = platform_headers(platform, PUBLIC_KEY_ID, body)
    pem = public_pem(platform)
    with pytest.raises(ValueError, match=r"api_v3_key must be .* got 31 bytes") as short:
        parse_notification(headers, body, platform_public_key=pem, api_v3_key=API_V3_KEY[:31])
    assert API_V3_KEY[:31] not in str(short.value)
    with pytest.raises(ValueError, match="platform_certificates"):
        parse_notification(headers, body, api_v3_key=API_V3_KEY)
    with pytest.raises(TypeError, match="body"):
        parse_notification(headers, {"x": 1}, platform_public_key=pem,  # type: ignore[arg-type]
                           api_v3_key=API_V3_KEY)


def test_readme_flask_handler(platform: RSAPrivateKey, intruder: RSAPrivateKey,
                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/presets.md's Flask notify_url handler, run as written (its key from the
    environment, the platform key from pub_key.pem): 204 for a genuine payment
    notification (recorded), 400 FAIL for a forged one (not recorded)."""
    pytest.importorskip("flask")
    page = Path(__file__).resolve().parent.parent / "docs" / "presets.md"
    code = next(block for block in page.read_text(encoding="utf-8").split("```python\n")[1:]
                if "from flask import Flask" in block).split("```", 1)[0]
    monkeypatch.setenv("WECHATPAY_APIV3_KEY", API_V3_KEY)
    monkeypatch.setenv("WECHATPAY_PUBLIC_KEY_ID", PUBLIC_KEY_ID)
    (tmp_path / "pub_key.pem").write_text(public_pem(platform))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme_notify"}
    exec(code, namespace)  # the page's own snippet, as written
    paid = namespace["paid_orders"]
    client = namespace["app"].test_client()
    body = notification(PAID, API_V3_KEY)
    genuine = client.post("/wechatpay/notify", data=body,
                          headers=platform_headers(platform, PUBLIC_KEY_ID, body))
    assert genuine.status_code == 204 and paid == [PAID]
    forged = client.post("/wechatpay/notify", data=body,
                         headers=platform_headers(intruder, PUBLIC_KEY_ID, body))
    assert forged.status_code == 400 and forged.get_json()["code"] == "FAIL"
    assert paid == [PAID]


def test_freshness_limit_is_five_minutes_of_the_injected_clock(platform: RSAPrivateKey) -> None:
    """An honest signature 299 s old is accepted and one 301 s old (or 301 s ahead) is
    refused as stale, measured with the verifier's clock."""
    stamp = 1_795_000_000
    body = b'{"prepay_id": "wx1"}'
    headers = platform_headers(platform, PUBLIC_KEY_ID, body, timestamp=stamp)
    for offset, fresh in ((299, True), (-299, True), (301, False), (-301, False)):
        verifier = PlatformVerifier(public_key=public_pem(platform),
                                    public_key_id=PUBLIC_KEY_ID,
                                    clock=lambda offset=offset: stamp + offset)
        if fresh:
            verifier.verify(headers, body)
        else:
            with pytest.raises(ResponseSignatureError) as caught:
                verifier.verify(headers, body)
            assert caught.value.check == "timestamp"


def test_callable_api_does_not_retry_a_forged_answer(
        merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey) -> None:
    """execute_with_smart_retry around a verified payment call does not retry the
    ResponseSignatureError either: one request in all."""
    from requests_smartretry import execute_with_smart_retry

    session = verified_session(merchant_pem, fake, platform)
    fake.forge("tampered")
    with pytest.raises(ResponseSignatureError):
        execute_with_smart_retry(lambda: session.post(JSAPI, json=order()), max_retries=2,
                                 sleep=lambda s: None, timeout=10.0)
    assert fake.hits() == 1


def test_absent_signature_type_is_taken_as_rsa(platform: RSAPrivateKey) -> None:
    """An honest answer without Wechatpay-Signature-Type verifies (the vendor's rule needs
    only Serial, Signature, Timestamp and Nonce), and the same answer altered does not."""
    verifier = PlatformVerifier(public_key=public_pem(platform), public_key_id=PUBLIC_KEY_ID)
    body = b'{"prepay_id": "wx1"}'
    headers = platform_headers(platform, PUBLIC_KEY_ID, body)
    del headers["Wechatpay-Signature-Type"]
    verifier.verify(headers, body)
    with pytest.raises(ResponseSignatureError, match=r"\(signature check\)"):
        verifier.verify(headers, body.replace(b"wx1", b"wx2"))


# -- review of issue 16: what a hostile network or a careless caller tries -------------------


def test_unreadable_huge_timestamp_is_a_timestamp_failure(
        merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey) -> None:
    """A Wechatpay-Timestamp too large for a float (400 digits) or not plain digits is
    refused by the timestamp check, on an answer (one request) and on a notification, never
    as a raw OverflowError."""
    session = verified_session(merchant_pem, fake, platform, max_retries=2)
    fake.script(JSAPI, (200, {"prepay_id": "wx1"}, {"Wechatpay-Timestamp": "9" * 400}))
    with pytest.raises(ResponseSignatureError) as caught:
        session.post(JSAPI, json=order())
    assert caught.value.check == "timestamp" and fake.hits() == 1
    body = notification(PAID, API_V3_KEY)
    for stamp in ("9" * 400, "1_700_000_000", "-1"):
        headers = {**platform_headers(platform, PUBLIC_KEY_ID, body), "Wechatpay-Timestamp": stamp}
        with pytest.raises(ResponseSignatureError) as caught:
            parse_notification(headers, body, platform_public_key=public_pem(platform),
                               platform_public_key_id=PUBLIC_KEY_ID, api_v3_key=API_V3_KEY)
        assert caught.value.check == "timestamp", stamp


def test_notification_headers_must_be_a_mapping(platform: RSAPrivateKey) -> None:
    """parse_notification(None, ...) or headers that are not name/value pairs fail with a
    TypeError naming the headers parameter."""
    body = notification(PAID, API_V3_KEY)
    for headers in (None, 5, ["Wechatpay-Signature"]):
        with pytest.raises(TypeError, match="headers must be"):
            parse_notification(headers, body, platform_public_key=public_pem(platform),
                               platform_public_key_id=PUBLIC_KEY_ID, api_v3_key=API_V3_KEY)


@pytest.mark.parametrize("status", [302, 307])
def test_redirect_to_another_origin_is_refused_not_followed(
        merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey, status: int) -> None:
    """A redirect from the payment endpoint to an origin the adapter is not mounted on (whose
    unsigned 2xx nothing would verify) raises ResponseSignatureError ("redirect") instead of
    being followed."""
    def forged(server: FaultServer, sock: Any, request: Any) -> None:
        server.send(sock, 200, b'{"prepay_id": "wx-FORGED"}',
                    {"Content-Type": "application/json"})

    with FaultServer(handlers={"/": forged}) as elsewhere:
        session = verified_session(merchant_pem, fake, platform, max_retries=2)
        fake.script(JSAPI, (status, {}, {"Location": elsewhere.url(JSAPI)}))
        with pytest.raises(ResponseSignatureError) as caught:
            session.post(JSAPI, json=order())
        assert caught.value.check == "redirect" and "(redirect check)" in str(caught.value)
        assert elsewhere.hits() == 0 and fake.hits() == 1


def test_rejected_body_reaches_no_one(
        merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey) -> None:
    """The body of a refused 2xx is dropped: neither the exception's response, nor the
    hooks' events, nor the attempt history hand the forged prepay_id to anyone."""
    seen: list[Any] = []
    session = verified_session(merchant_pem, fake, platform, hooks=[seen.append])
    fake.forge("tampered")
    with pytest.raises(ResponseSignatureError) as caught:
        session.post(JSAPI, json=order())
    error = caught.value
    assert error.response is not None and error.response.status_code == 200
    assert error.response.content == b"" and error.response.text == ""
    carried = [e.error for e in (*seen, *attempt_history(error)) if e.error is not None]
    assert carried, "the failure event carries the error"
    for exc in carried:
        response = getattr(exc, "response", None)
        assert response is None or b"FORGED" not in (response.content or b"")


@pytest.mark.parametrize("entry", ["execute_with_retry", "retry_on", "with_retry"])
def test_callable_api_never_retries_a_signature_error(
        merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey, entry: str) -> None:
    """The basic variant (which retries every exception), retry_on=RequestException and the
    decorator all give up on a ResponseSignatureError after one request."""
    from requests_smartretry import execute_with_retry, execute_with_smart_retry, with_retry

    session = verified_session(merchant_pem, fake, platform)
    fake.forge("unsigned")

    def call() -> requests.Response:
        return session.post(JSAPI, json=order())

    options: dict[str, Any] = {"max_retries": 2, "sleep": lambda s: None, "timeout": 10.0}
    with pytest.raises(ResponseSignatureError):
        if entry == "execute_with_retry":
            execute_with_retry(call, **options)
        elif entry == "retry_on":
            execute_with_smart_retry(call, retry_on=requests.RequestException, **options)
        else:
            with_retry(smart=False, **options)(call)()
    assert fake.hits() == 1


def test_certificate_outside_its_validity_verifies_nothing(
        platform: RSAPrivateKey, certificates: dict[str, str]) -> None:
    """An answer signed with a platform certificate's key is refused by the serial check
    once that certificate has expired, or before it is valid (wechatpayv3 drops such
    certificates), and accepted while it is valid; the clock is the verifier's."""
    first = f"{CERT_SERIALS[0]:X}"
    body = b'{"prepay_id": "wx1"}'
    now = time.time()
    for days, state in ((0, None), (400, "expired"), (-2, "not yet valid")):
        stamp = now + days * 86400
        verifier = PlatformVerifier(certificates=certificates, clock=lambda stamp=stamp: stamp)
        headers = platform_headers(platform, first, body, timestamp=int(stamp))
        if state is None:
            verifier.verify(headers, body)
            continue
        with pytest.raises(ResponseSignatureError, match=f"which is {state}") as caught:
            verifier.verify(headers, body)
        assert caught.value.check == "serial"


def test_notification_body_that_is_not_utf8_text_is_named(platform: RSAPrivateKey) -> None:
    """A str body holding undecodable bytes (surrogate escapes) to parse_notification, or a
    dict body to PlatformVerifier.verify, fails with an error naming the body."""
    body = notification(PAID, API_V3_KEY)
    headers = platform_headers(platform, PUBLIC_KEY_ID, body)
    with pytest.raises(ValueError, match="body is a str that is not UTF-8"):
        parse_notification(headers, body.decode() + "\udcff",
                           platform_public_key=public_pem(platform),
                           platform_public_key_id=PUBLIC_KEY_ID, api_v3_key=API_V3_KEY)
    verifier = PlatformVerifier(public_key=public_pem(platform), public_key_id=PUBLIC_KEY_ID)
    with pytest.raises(TypeError, match="body must be the raw request body"):
        verifier.verify(headers, {"resource": {}})  # type: ignore[arg-type]


def test_streamed_answer_is_read_for_verification_inside_the_attempt_deadline(
        platform: RSAPrivateKey) -> None:
    """With stream=True a verifying adapter still reads the body it must verify within the
    attempt deadline: a 2xx dripped a byte at a time is cut as a timeout instead of holding
    the call until the last byte."""
    with FaultServer() as server:
        adapter = payment_adapter(endpoint=server.url(""), backup_endpoint=None,
                                  platform_public_key=public_pem(platform),
                                  platform_public_key_id=PUBLIC_KEY_ID, max_retries=0)
        session = requests.Session()
        session.mount(server.url(""), adapter)
        with pytest.raises(requests.exceptions.Timeout):
            session.get(server.url("/drip?interval=0.05&count=40"), stream=True, timeout=0.3)
        assert server.hits() == 1


def test_platform_key_id_read_from_a_file_with_its_newline_works(
        merchant_pem: str, fake: FakeWechatPay, platform: RSAPrivateKey) -> None:
    """A platform_public_key_id with surrounding whitespace (a file's trailing newline) is
    taken without it: the genuine answer verifies and Wechatpay-Serial is sent clean."""
    session = payment_session(MCHID, SERIAL, merchant_pem, endpoint=fake.endpoint,
                              platform_public_key=public_pem(platform),
                              platform_public_key_id=f" {PUBLIC_KEY_ID}\n", **fast())
    assert session.post(JSAPI, json=order()).status_code == 200
    assert fake.server.received(JSAPI)[0].headers["wechatpay-serial"] == PUBLIC_KEY_ID
