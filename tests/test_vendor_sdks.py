"""The vendors' official SDKs (volcengine, volcenginesdkarkruntime, wechatpayv3) through
the presets' SDK integrations, against local fakes that count executions: a retryable
vendor error is retried once, a business code is not, a hung server is cut at the policy's
timeout, and nothing ever goes to a host other than the configured endpoint."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from collections.abc import Awaitable, Iterator
from typing import Any, Callable

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from requests_smartretry import ResponseSignatureError, photo_adapter, stats_of
from requests_smartretry.faultserver import FaultServer, unused_port
from requests_smartretry.presets.volcengine import mount_on_sdk_service
from requests_smartretry.presets.wechatpay import mount_on_wechatpay
from tests.fakes.ark import FakeArk, ark_error
from tests.fakes.volcengine import FakeVisual, visual_error
from tests.fakes.wechatpay import JSAPI, PUBLIC_KEY_ID, FakeWechatPay, pay_error, public_pem

volcengine_visual = pytest.importorskip("volcengine.visual.VisualService")
ark = pytest.importorskip("volcenginesdkarkruntime")
ark_errors = pytest.importorskip("volcenginesdkarkruntime._exceptions")
wechatpayv3 = pytest.importorskip("wechatpayv3")
httpx_module = pytest.importorskip("requests_smartretry.httpx")

AK, SK = "AKLTfakeAccessKey", "c2VjcmV0S2V5Rm9yVGVzdHM="
API_KEY = "ark-test-key-0001"
MCHID, SERIAL = "1900000001", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "sleep": lambda s: None}
CUT = 0.4  # the short policy timeout of the hung-server tests
_CONTENT = [{"type": "text", "text": "一只猫在弹钢琴"}]


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuses (and records) every lookup of or connection to a non-loopback host; the
    test fails if any was attempted."""
    refused: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def loopback(host: Any) -> bool:
        host = host.decode() if isinstance(host, bytes) else str(host)
        if host in ("localhost", ""):
            return True
        try:
            return ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            return False

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not loopback(host):
            refused.append(f"lookup {host}")
            raise socket.gaierror(socket.EAI_NONAME, "non-loopback host refused by the test")
        return real_getaddrinfo(host, *args, **kwargs)

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not loopback(address[0]):
            refused.append(f"connect {address[0]}")
            raise ConnectionRefusedError(111, "non-loopback host refused by the test")

    def connect(sock: socket.socket, address: Any) -> Any:
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> Any:
        check(sock, address)
        return real_connect_ex(sock, address)

    def by_name(real: Any) -> Any:
        def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not loopback(host):
                refused.append(f"lookup {host}")
                raise socket.gaierror(socket.EAI_NONAME, "non-loopback host refused by the test")
            return real(host, *args, **kwargs)
        return lookup

    real_connect_ex = socket.socket.connect_ex
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "gethostbyname", by_name(socket.gethostbyname))
    monkeypatch.setattr(socket, "gethostbyname_ex", by_name(socket.gethostbyname_ex))
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield refused
    assert refused == [], f"traffic to non-loopback hosts: {refused}"


# -- volcengine (VisualService) through mount_on_sdk_service ------------------------------


@pytest.fixture()
def visual() -> Iterator[Any]:
    """The SDK's VisualService singleton, put back as it was afterwards (process-wide)."""
    service = volcengine_visual.VisualService()
    yield service
    service.__class__ = volcengine_visual.VisualService
    for slot in ("_smartretry_adapter", "_smartretry_session"):
        service.__dict__.pop(slot, None)
    service.__dict__["session"] = requests.session()


@pytest.fixture()
def visual_fake() -> Iterator[FakeVisual]:
    with FakeVisual(AK, SK) as fake:
        yield fake


def _point(service: Any, fake: FakeVisual) -> None:
    service.set_ak(AK)
    service.set_sk(SK)
    service.set_host(f"127.0.0.1:{fake.server.port}")
    service.set_scheme("http")


def test_volcengine_sdk_retries_a_rate_limit_once(visual: Any, visual_fake: FakeVisual) -> None:
    """VisualService.cv_process: a 50429 is retried once (two executions), then succeeds."""
    mount_on_sdk_service(visual, photo_adapter(AK, SK, **FAST))
    _point(visual, visual_fake)
    visual_fake.script("CVProcess", (429, visual_error(50429)))
    assert visual.cv_process({"req_key": "x"})["code"] == 10000
    assert visual_fake.hits() == 2
    assert stats_of(visual.session).snapshot()["生成艺术照"]["retries"] == 1


def test_volcengine_sdk_business_code_is_not_retried(visual: Any,
                                                     visual_fake: FakeVisual) -> None:
    """A 50411 input rejection is one execution, raised by the SDK as it does."""
    mount_on_sdk_service(visual, photo_adapter(AK, SK, **FAST))
    _point(visual, visual_fake)
    visual_fake.script("CVProcess", (400, visual_error(50411)))
    with pytest.raises(Exception, match="50411"):
        visual.cv_process({"req_key": "x"})
    assert visual_fake.hits() == 1


def test_volcengine_sdk_hung_server_is_cut_at_the_policy_timeout(
        visual: Any, visual_fake: FakeVisual) -> None:
    """The SDK passes timeout=(30, 30) on every call; the attempt still ends at the
    policy's timeout, not at 60 s."""
    assert (visual.service_info.connection_timeout, visual.service_info.socket_timeout) \
        == (30, 30)
    mount_on_sdk_service(visual, photo_adapter(AK, SK, timeout=CUT, max_retries=0, **FAST))
    _point(visual, visual_fake)
    visual_fake.script("CVProcess", ("hang", 5))
    started = time.monotonic()
    with pytest.raises(Exception, match="Read timed out"):  # the SDK re-raises it as text
        visual.cv_process({"req_key": "x"})
    assert time.monotonic() - started < CUT + 1.5
    assert visual_fake.hits() == 1


def test_volcengine_sdk_session_signs_nothing_for_another_host(
        visual: Any, visual_fake: FakeVisual, server: FaultServer) -> None:
    """The adapter serves the service's origin only: a request the SDK's session makes to
    another host carries no Authorization of ours (and is not retried by us)."""
    mount_on_sdk_service(visual, photo_adapter(AK, SK, **FAST))
    _point(visual, visual_fake)
    assert visual.session.get(server.url("/ok")).status_code == 200
    assert "authorization" not in server.received("/ok")[0].headers
    visual.session.get(server.url("/status/503"))
    assert server.hits("/status/503") == 1


# -- Ark (volcenginesdkarkruntime) through video_client -----------------------------------


def _ark(fake: FakeArk, **options: Any) -> Any:
    client = httpx_module.video_client(api_key=API_KEY, endpoint=fake.endpoint,
                                       backoff_base=0.01, **options)
    return ark.Ark(api_key=API_KEY, base_url=fake.endpoint, http_client=client, max_retries=0)


def test_ark_sdk_retries_a_rate_limit_once() -> None:
    """A 429 RateLimitExceeded is retried once: two executions, the task is created."""
    with FakeArk(api_key=API_KEY) as fake:
        fake.script("create", (429, ark_error("RateLimitExceeded.EndpointRPMExceeded")))
        task = _ark(fake).content_generation.tasks.create(model="m", content=_CONTENT)
        assert task.id in fake.tasks and fake.hits() == 2


def test_ark_sdk_business_code_is_not_retried() -> None:
    """A 400 InvalidParameter is one execution."""
    with FakeArk(api_key=API_KEY) as fake:
        fake.script("create", (400, ark_error("InvalidParameter", "bad model")))
        with pytest.raises(ark_errors.ArkBadRequestError):
            _ark(fake).content_generation.tasks.create(model="m", content=_CONTENT)
        assert fake.hits() == 1


def test_ark_sdk_hung_server_is_cut_at_the_policy_timeout() -> None:
    """The SDK's 600 s read timeout does not apply: the attempt ends at the policy's."""
    with FakeArk(api_key=API_KEY) as fake:
        fake.script("query", ("hang", 5))
        started = time.monotonic()
        with pytest.raises(ark_errors.ArkAPITimeoutError):
            _ark(fake, timeout=CUT, max_retries=0).content_generation.tasks.get(
                task_id="cgt-0001")
        assert time.monotonic() - started < CUT + 1.5
        assert fake.hits() == 1


def test_ark_sdk_with_another_base_url_is_refused_clearly() -> None:
    """Ark(base_url=B) with a video_client for another endpoint: the call is refused with
    an error naming both origins, and B receives nothing (no un-retried call)."""
    with FakeArk(api_key=API_KEY) as ours, FakeArk(api_key=API_KEY) as other:
        client = httpx_module.video_client(api_key=API_KEY, endpoint=ours.endpoint)
        sdk = ark.Ark(api_key=API_KEY, base_url=other.endpoint, http_client=client,
                      max_retries=0)
        with pytest.raises(ark_errors.ArkAPIConnectionError) as caught:
            sdk.content_generation.tasks.create(model="m", content=_CONTENT)
        cause = caught.value.__cause__
        assert isinstance(cause, ValueError)
        assert other.endpoint.split("/api")[0] in str(cause)  # the SDK's origin
        assert ours.endpoint.split("/api")[0] in str(cause)  # video_client's
        assert other.hits() == 0 and ours.hits() == 0


# -- AsyncArk through video_async_client -----------------------------------------------------


def _async_ark(fake: FakeArk, call: Callable[[Any], Awaitable[Any]], **options: Any) -> Any:
    """``call(sdk)`` on an AsyncArk whose http_client is a video_async_client for ``fake``,
    run to completion on a fresh event loop."""
    client = httpx_module.video_async_client(api_key=API_KEY, endpoint=fake.endpoint,
                                             backoff_base=0.01, **options)

    async def run() -> Any:
        sdk = ark.AsyncArk(api_key=API_KEY, base_url=fake.endpoint, http_client=client,
                           max_retries=0)
        try:
            return await call(sdk)
        finally:
            await sdk.close()

    return asyncio.run(run())


def _create(sdk: Any) -> Awaitable[Any]:
    return sdk.content_generation.tasks.create(model="m", content=_CONTENT)  # type: ignore[no-any-return]


def test_async_ark_sdk_retries_a_rate_limit_once() -> None:
    """AsyncArk: a 429 RateLimitExceeded is retried once (asyncio.sleep between): two
    executions, the task is created."""
    with FakeArk(api_key=API_KEY) as fake:
        fake.script("create", (429, ark_error("RateLimitExceeded.EndpointRPMExceeded")))
        task = _async_ark(fake, _create)
        assert task.id in fake.tasks and fake.hits() == 2


def test_async_ark_sdk_business_code_is_not_retried() -> None:
    """AsyncArk: a 400 InvalidParameter is one execution, raised as the SDK's error."""
    with FakeArk(api_key=API_KEY) as fake:
        fake.script("create", (400, ark_error("InvalidParameter", "bad model")))
        with pytest.raises(ark_errors.ArkBadRequestError):
            _async_ark(fake, _create)
        assert fake.hits() == 1


def test_async_ark_sdk_hung_server_is_cut_at_the_policy_timeout() -> None:
    """AsyncArk: the attempt on a hung server is cancelled at the policy's timeout."""
    with FakeArk(api_key=API_KEY) as fake:
        fake.script("query", ("hang", 5))
        started = time.monotonic()
        with pytest.raises(ark_errors.ArkAPITimeoutError):
            _async_ark(fake, lambda sdk: sdk.content_generation.tasks.get(task_id="cgt-0001"),
                       timeout=CUT, max_retries=0)
        assert time.monotonic() - started < CUT + 1.5
        assert fake.hits() == 1


# -- WeChat Pay (wechatpayv3.WeChatPay) through mount_on_wechatpay -------------------------


@pytest.fixture(scope="module")
def merchant_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def platform_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture()
def pay_fake(merchant_key: rsa.RSAPrivateKey,
             platform_key: rsa.RSAPrivateKey) -> Iterator[FakeWechatPay]:
    with FakeWechatPay(merchant_key.public_key(), MCHID, platform_key=platform_key) as fake:
        yield fake


def _wechatpay(merchant_key: rsa.RSAPrivateKey, platform_key: rsa.RSAPrivateKey | None,
               cert_dir: Any = None) -> Any:
    """A WeChatPay object: in public-key mode with ``platform_key``, else in certificate
    mode with the certificates in ``cert_dir`` (so that building it downloads nothing)."""
    pem = merchant_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()
    keys: dict[str, Any] = {"cert_dir": str(cert_dir)} if platform_key is None else {
        "public_key": public_pem(platform_key), "public_key_id": PUBLIC_KEY_ID}
    return wechatpayv3.WeChatPay(
        wechatpay_type=wechatpayv3.WeChatPayType.JSAPI, mchid=MCHID, private_key=pem,
        cert_serial_no=SERIAL, appid="wxd678efh567hg6787", apiv3_key="a" * 32,
        notify_url="https://merchant.example/notify", **keys)


def _order(pay: Any, number: str = "ORDER-SDK-1") -> tuple[int, Any]:
    code, message = pay.pay(description="艺术照套餐", out_trade_no=number,
                            amount={"total": 100}, payer={"openid": "oUpF8uMuAJO_M2pxb1Q9"})
    return code, message


def test_wechatpay_sdk_system_error_is_retried_once(
        merchant_key: rsa.RSAPrivateKey, platform_key: rsa.RSAPrivateKey,
        pay_fake: FakeWechatPay) -> None:
    """A 500 SYSTEM_ERROR is retried once, signed afresh and verified: the SDK's pay()
    returns (200, its JSON) after two executions, one order."""
    pay = mount_on_wechatpay(_wechatpay(merchant_key, platform_key),
                             endpoint=pay_fake.endpoint, **FAST)
    pay_fake.script(JSAPI, (500, pay_error("SYSTEM_ERROR")))
    code, message = _order(pay)
    assert code == 200 and json.loads(message)["prepay_id"].startswith("wx-prepay-")
    assert pay_fake.hits() == 2 and len(pay_fake.verified) == 2
    assert len({fields["nonce_str"] for fields in pay_fake.verified}) == 2
    assert len(pay_fake.orders) == 1


def test_wechatpay_sdk_business_code_is_not_retried(
        merchant_key: rsa.RSAPrivateKey, platform_key: rsa.RSAPrivateKey,
        pay_fake: FakeWechatPay) -> None:
    """OPENID_MISMATCH (even with HTTP 500) is one execution, returned as the SDK does."""
    pay = mount_on_wechatpay(_wechatpay(merchant_key, platform_key),
                             endpoint=pay_fake.endpoint, **FAST)
    pay_fake.script(JSAPI, (500, pay_error("OPENID_MISMATCH")))
    code, message = _order(pay)
    assert code == 500 and "OPENID_MISMATCH" in message
    assert pay_fake.hits() == 1


def test_wechatpay_sdk_hung_server_is_cut_at_the_policy_timeout(
        merchant_key: rsa.RSAPrivateKey, platform_key: rsa.RSAPrivateKey,
        pay_fake: FakeWechatPay) -> None:
    """The SDK's own call has no timeout; through the preset the attempt ends at the
    policy's, and an overridden endpoint has no production backup to fail over to."""
    pay = mount_on_wechatpay(_wechatpay(merchant_key, platform_key),
                             endpoint=pay_fake.endpoint, timeout=CUT, max_retries=0, **FAST)
    pay_fake.script(JSAPI, ("hang", 5))
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        _order(pay)
    assert time.monotonic() - started < CUT + 1.5
    assert pay_fake.hits() == 1


def test_wechatpay_sdk_fails_over_and_verifies(
        merchant_key: rsa.RSAPrivateKey, platform_key: rsa.RSAPrivateKey,
        pay_fake: FakeWechatPay) -> None:
    """With the primary refusing connections the order goes to the backup given; a forged
    answer raises ResponseSignatureError after one execution."""
    primary = f"http://127.0.0.1:{unused_port()}"
    pay = mount_on_wechatpay(_wechatpay(merchant_key, platform_key), endpoint=primary,
                             backup_endpoint=pay_fake.endpoint, **FAST)
    assert _order(pay)[0] == 200 and pay_fake.hits() == 1
    pay_fake.forge("tampered")
    direct = mount_on_wechatpay(_wechatpay(merchant_key, platform_key),
                                endpoint=pay_fake.endpoint, **FAST)
    with pytest.raises(ResponseSignatureError):
        _order(direct, "ORDER-SDK-2")
    assert pay_fake.hits() == 2


def test_wechatpay_sdk_integration_is_per_instance(
        merchant_key: rsa.RSAPrivateKey, platform_key: rsa.RSAPrivateKey) -> None:
    """Only the mounted object changes: the SDK's Core class and module stay as they are,
    and another WeChatPay object keeps the SDK's own sending."""
    import wechatpayv3.core as core_module

    request_before, requests_before = core_module.Core.request, core_module.requests
    mounted = mount_on_wechatpay(_wechatpay(merchant_key, platform_key),
                                 endpoint="http://127.0.0.1:9")
    other = _wechatpay(merchant_key, platform_key)
    assert core_module.Core.request is request_before
    assert core_module.requests is requests_before
    assert type(other._core) is core_module.Core
    assert type(mounted._core) is not core_module.Core
    assert isinstance(mounted._core, core_module.Core)
    with pytest.raises(TypeError, match="WeChatPay"):
        mount_on_wechatpay(object())


def test_wechatpay_sdk_endpoint_defaults_to_the_sdk_gateway(
        merchant_key: rsa.RSAPrivateKey, platform_key: rsa.RSAPrivateKey,
        pay_fake: FakeWechatPay) -> None:
    """A WeChatPay object configured for another gateway (a sandbox, a mock) is mounted on
    that gateway, not on production: its orders reach it, and when it is down nothing
    fails over to a production host (the loopback guard would refuse and record it)."""
    pay = _wechatpay(merchant_key, platform_key)
    pay._core._gate_way = pay_fake.endpoint
    mount_on_wechatpay(pay, **FAST)
    assert _order(pay)[0] == 200 and pay_fake.hits() == 1
    down = _wechatpay(merchant_key, platform_key)
    down._core._gate_way = f"http://127.0.0.1:{unused_port()}"
    mount_on_wechatpay(down, **FAST)
    with pytest.raises(requests.ConnectionError):
        _order(down, "ORDER-SDK-2")
    assert pay_fake.hits() == 1


def test_wechatpay_sdk_follows_a_platform_certificate_rotation(
        merchant_key: rsa.RSAPrivateKey, tmp_path: Any) -> None:
    """Certificate mode: once WeChat Pay signs with a new platform certificate, the first
    answer naming it makes the SDK download the certificates (through the preset, unverified
    as the SDK asks), and the answer verifies with the new one; an unknown serial is still
    refused after a download."""
    from tests.fakes.wechatpay import new_key, platform_certificate

    old_key, new = new_key(), new_key()
    old_pem, new_pem = platform_certificate(old_key, 0x1111), platform_certificate(new, 0x2222)
    with FakeWechatPay(merchant_key.public_key(), MCHID, platform_key=old_key,
                       platform_serial="1111") as fake:
        (tmp_path / "platform.pem").write_text(old_pem)
        pay = _wechatpay(merchant_key, None, cert_dir=tmp_path)
        mount_on_wechatpay(pay, endpoint=fake.endpoint, **FAST)
        assert _order(pay)[0] == 200 and fake.hits() == 1
        fake.platform_key, fake.platform_serial = new, "2222"  # the rotation
        fake.certificates = [old_pem, new_pem]
        code, message = _order(pay, "ORDER-SDK-2")
        assert code == 200 and json.loads(message)["prepay_id"].startswith("wx-prepay-")
        assert [r.path for r in fake.server.received()][1:] == [
            JSAPI, "/v3/certificates"]  # the order, then the download its answer caused
        assert {c.serial_number for c in pay._core._certificates} == {0x1111, 0x2222}
        assert _order(pay, "ORDER-SDK-3")[0] == 200 and fake.hits() == 4  # no new download
        fake.forge("unknown_serial")
        with pytest.raises(ResponseSignatureError) as refused:
            _order(pay, "ORDER-SDK-4")
        assert refused.value.check == "serial"


def test_wechatpay_sdk_session_close_closes_its_sockets(
        merchant_key: rsa.RSAPrivateKey, platform_key: rsa.RSAPrivateKey,
        pay_fake: FakeWechatPay) -> None:
    """After a business error, a forged answer and a failover, sdk_session(pay).close()
    closes every connection at once: the fake sees none left open, with the garbage
    collector off (the failed calls' responses and errors hold each other)."""
    import gc

    from requests_smartretry.presets.wechatpay import sdk_session

    primary = FakeWechatPay(merchant_key.public_key(), MCHID, platform_key=platform_key)
    with primary:
        pay = mount_on_wechatpay(_wechatpay(merchant_key, platform_key),
                                 endpoint=primary.endpoint, backup_endpoint=pay_fake.endpoint,
                                 **FAST)
        gc.disable()
        try:
            primary.script(JSAPI, (500, pay_error("OPENID_MISMATCH")), "reset")
            assert _order(pay)[0] == 500
            assert _order(pay, "ORDER-SDK-2")[0] == 200  # reset: failed over to the backup
            pay_fake.forge("tampered")
            primary.forge("tampered")
            with pytest.raises(ResponseSignatureError):
                _order(pay, "ORDER-SDK-3")
            assert primary.server.open_connections() + pay_fake.server.open_connections() >= 1
            sdk_session(pay).close()
            ends = time.monotonic() + 5.0
            while (primary.server.open_connections() or pay_fake.server.open_connections()) \
                    and time.monotonic() < ends:
                time.sleep(0.02)
            assert primary.server.open_connections() == 0
            assert pay_fake.server.open_connections() == 0
        finally:
            gc.enable()
    with pytest.raises(TypeError, match="mount_on_wechatpay"):
        sdk_session(_wechatpay(merchant_key, platform_key))


def test_volcengine_sdk_mount_survives_reinit_and_set_host(
        visual: Any, visual_fake: FakeVisual) -> None:
    """VisualService() called again (the singleton re-runs __init__: new session, keys and
    host reset) and then pointed at another host with set_host: the adapter still serves
    it, and a 50429 there is retried once."""
    mount_on_sdk_service(visual, photo_adapter(AK, SK, **FAST))
    with FakeVisual(AK, SK) as moved:
        again = volcengine_visual.VisualService()
        assert again is visual
        _point(again, moved)
        moved.script("CVProcess", (429, visual_error(50429)))
        assert again.cv_process({"req_key": "x"})["code"] == 10000
        assert moved.hits() == 2 and visual_fake.hits() == 0
        assert stats_of(again.session).snapshot()["生成艺术照"]["retries"] == 1


@pytest.mark.parametrize(("endpoint_form", "base_url_form"), [
    ("{e}", "{e}/"), ("{e}/", "{e}"), ("{e}/", "{e}/"), ("{o}", "{e}"), ("{o}", "{e}/"),
])
def test_ark_sdk_base_url_variants_get_the_policy(endpoint_form: str,
                                                  base_url_form: str) -> None:
    """video_client's endpoint and Ark's base_url spelled differently (a trailing slash,
    the origin alone for the endpoint, /api/v3 for the SDK): one origin, so a 429 is still
    retried once (two executions)."""
    with FakeArk(api_key=API_KEY) as fake:
        origin = fake.endpoint.split("/api")[0]
        endpoint = endpoint_form.format(e=fake.endpoint, o=origin)
        client = httpx_module.video_client(api_key=API_KEY, endpoint=endpoint,
                                           backoff_base=0.01)
        sdk = ark.Ark(api_key=API_KEY, base_url=base_url_form.format(e=fake.endpoint),
                      http_client=client, max_retries=0)
        fake.script("create", (429, ark_error("RateLimitExceeded.EndpointRPMExceeded")))
        task = sdk.content_generation.tasks.create(model="m", content=_CONTENT)
        assert task.id in fake.tasks and fake.hits() == 2
