"""WeChat Pay v3 (JSAPI orders): RSA signing, the error-code table, failover, the preset.

Facts (``VENDORS.md``): ``POST /v3/pay/transactions/jsapi`` places an order; errors are an
HTTP status plus ``{"code", "message"}`` (spellings vary between doc versions, both are
matched); ``out_trade_no`` makes an order placement idempotent; the backup domain
``api2.mch.weixin.qq.com`` is where to go on outage or timeout.  Requests carry
``Accept: application/json`` (and ``Content-Type: application/json`` with a body); every
2xx answer is signed by the platform and must be verified (a 2xx without a signature is
forged).  ``cryptography`` (the ``wechatpay`` extra) is imported only when a signer or a
verifier is built.

VENDORS notes (where verification differs from ``wechatpayv3`` 2.0.4, and why): a
``Wechatpay-Timestamp`` more than 5 minutes from now is refused (the vendor's documented
recommendation; the SDK does not check it); an absent ``Wechatpay-Signature-Type`` is
taken as RSA (the vendor's signature rule names only Serial, Signature, Timestamp and
Nonce; the Python SDK refuses it), while any other type is refused; bill and
complaint-image downloads are not verified (WeChat Pay does not sign them; the SDK skips
them too); a redirect is refused, not followed (the SDK verifies where it lands; here the
session would follow it to an origin the adapter may not be mounted on).  Otherwise both
give the same verdict on the same answers, which ``tests/test_presets_wechatpay_platform.py``
checks.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional, Union
from urllib.parse import urlsplit

import requests

from .. import forksafe
from ..adapter import SmartRetryAdapter
from ..classify import Classification
from ..errors import ResponseSignatureError, attach_history
from ..events import Verdict
from ..policy import RetryPolicy
from ._base import (
    AttemptPreparer,
    BaseURLSession,
    body_bytes,
    build_adapter,
    check_credential,
    check_endpoint,
    json_body,
    preset_session,
)
from ._wechatpay_platform import (
    PemInput,
    PlatformVerifier,
    _rejected,
    check_api_v3_key,
    decrypt_json,
    raw_body,
    require_cryptography,
    wechatpay_headers,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..options import SessionOptions

__all__ = [
    "PlatformVerifier",
    "WechatPayAdapter",
    "WechatPaySigner",
    "classify_wechatpay_response",
    "mount_on_wechatpay",
    "name_wechatpay_request",
    "order_is_idempotent",
    "parse_notification",
    "payment_adapter",
    "payment_session",
    "sdk_session",
]

_log = logging.getLogger("requests_smartretry")

SERVICE_KEY = "wechatpay"
DEFAULT_ENDPOINT = "https://api.mch.weixin.qq.com"
DEFAULT_BACKUP_ENDPOINT = "https://api2.mch.weixin.qq.com"
# backup_endpoint's default: WeChat Pay's backup domain only when the primary is its real
# production domain; with any other endpoint (staging, a mock) no backup unless given.
_BACKUP_OF_DEFAULT: Any = type("_BackupOfDefault", (), {
    "__repr__": lambda self: "<the production backup only for the production endpoint>"})()


def _backup_for(endpoint: str, backup_endpoint: Any) -> Optional[str]:
    """The backup endpoint: the one given (``None``: none), or by default WeChat Pay's
    backup domain when ``endpoint`` is its production domain, otherwise none, so that a
    call against staging or a mock never fails over to production."""
    if backup_endpoint is _BACKUP_OF_DEFAULT:
        return DEFAULT_BACKUP_ENDPOINT if endpoint == DEFAULT_ENDPOINT else None
    if backup_endpoint is None:
        return None
    return check_endpoint("backup_endpoint", backup_endpoint)
JSAPI_PATH = "/v3/pay/transactions/jsapi"
SCHEMA = "WECHATPAY2-SHA256-RSA2048"

# code → (verdict, server_acted).  Codes not listed fall back to the HTTP-status table.
_CODE_TABLE: dict[str, tuple[Verdict, bool]] = {
    # "Retry with the same parameters."
    "SYSTEM_ERROR": (Verdict.SERVER_ERROR, True),
    "SYSTEMERROR": (Verdict.SERVER_ERROR, True),
    "BANK_ERROR": (Verdict.SERVER_ERROR, True),
    "BANKERROR": (Verdict.SERVER_ERROR, True),
    "FREQUENCY_LIMITED": (Verdict.RATE_LIMIT, False),
    # Permanent although sent with HTTP 500.
    "OPENID_MISMATCH": (Verdict.BUSINESS, True),
    "INVALID_TRANSACTIONID": (Verdict.BUSINESS, True),
    # 4xx: the request itself is wrong; repeating it cannot help.
    **dict.fromkeys(
        ("PARAM_ERROR", "INVALID_REQUEST", "APPID_MCHID_NOT_MATCH", "MCH_NOT_EXISTS",
         "ORDER_CLOSED", "SIGN_ERROR", "NO_AUTH", "NOAUTH", "OUT_TRADE_NO_USED", "RULE_LIMIT",
         "RULELIMIT", "TRADE_ERROR", "ACCOUNT_ERROR", "NOTENOUGH", "ORDER_NOT_EXIST"),
        (Verdict.BUSINESS, True),
    ),
}


def classify_wechatpay_response(response: requests.Response) -> Optional[Classification]:
    """The verdict on a WeChat Pay v3 error response from its ``code``; ``None`` (the
    HTTP-status table) for successes and codes the table does not know.

    Example: 500 ``SYSTEM_ERROR`` is retried; 500 ``OPENID_MISMATCH`` is not.
    """
    if response.status_code < 400:
        return None
    body = json_body(response)
    code = body.get("code") if body is not None else None
    if not isinstance(code, str) or code not in _CODE_TABLE:
        return None
    verdict, acted = _CODE_TABLE[code]
    return Classification(verdict, f"HTTP {response.status_code} {code}", server_acted=acted)


def name_wechatpay_request(request: requests.PreparedRequest, lang: str = "zh") -> Optional[str]:
    """The operation name for a WeChat Pay request (``None`` for other endpoints)."""
    if (request.method or "").upper() == "POST" and \
            urlsplit(request.url or "").path.rstrip("/") == JSAPI_PATH:
        return "微信支付下单" if lang == "zh" else "WeChat Pay order"
    return None


def order_is_idempotent(request: requests.PreparedRequest) -> bool:
    """True for a request whose JSON body carries ``out_trade_no``: the vendor accepts an
    identical repeat (and refuses a changed one), so resending it cannot double-charge."""
    body = request.body
    if not isinstance(body, (bytes, str)):
        return False
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    value = data.get("out_trade_no") if isinstance(data, dict) else None
    return isinstance(value, str) and bool(value.strip())


def _load_private_key(private_key: Any) -> Any:
    rsa = require_cryptography("signing")
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key
    if isinstance(private_key, str):
        private_key = private_key.encode("ascii", "replace")
    if not isinstance(private_key, bytes):
        raise TypeError(
            f"private_key must be PEM text (the apiclient_key.pem content) or an RSA key "
            f"object, got {type(private_key).__name__}"
        )
    try:
        key = load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"private_key is not a readable unencrypted PEM private key: {exc}") \
            from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"private_key must be an RSA key, got {type(key).__name__}")
    return key


def _default_nonce() -> str:
    # 32 upper-case hex characters, as the official SDKs make them.
    return uuid.uuid4().hex.upper()


class WechatPaySigner:
    """``WECHATPAY2-SHA256-RSA2048`` signing with a fresh nonce and timestamp per call.

    Example::

        signer = WechatPaySigner(mchid="1900000001", serial_no="5157F09E...",
                                 private_key=open("apiclient_key.pem").read())
        signer.sign(prepared)   # sets Authorization

    Signs ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n`` (SHA256, PKCS#1 v1.5) over the
    body exactly as sent.  ``clock`` (epoch seconds) and ``nonce`` are injectable for tests.
    """

    def __init__(
        self,
        mchid: str,
        serial_no: str,
        private_key: Union[str, bytes, Any],
        *,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[], str] = _default_nonce,
    ) -> None:
        self.mchid = check_credential("mchid", mchid)
        self.serial_no = check_credential("serial_no", serial_no)
        self._key = _load_private_key(private_key)
        for name, fn in (("clock", clock), ("nonce", nonce)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {fn!r}")
        self._clock = clock
        self._nonce = nonce

    def __repr__(self) -> str:
        return f"WechatPaySigner(mchid={self.mchid!r}, serial_no={self.serial_no!r})"

    def __getstate__(self) -> dict[str, Any]:
        # RSA key objects do not pickle; their PEM does (a pickled session keeps its key).
        from cryptography.hazmat.primitives import serialization

        state = dict(self.__dict__)
        state["_key"] = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._key = _load_private_key(state["_key"])

    def message(self, method: str, url: str, timestamp: str, nonce: str, body: bytes) -> bytes:
        """The bytes that are signed (the vendor's five lines)."""
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = f"{method.upper()}\n{target}\n{timestamp}\n{nonce}\n".encode()
        return head + body + b"\n"

    def sign(self, request: requests.PreparedRequest) -> None:
        """Set ``Authorization`` for this attempt (new timestamp and nonce)."""
        from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
        from cryptography.hazmat.primitives.hashes import SHA256

        timestamp = str(int(self._clock()))
        nonce = self._nonce()
        if not isinstance(nonce, str) or not nonce or '"' in nonce:
            raise ValueError(f"nonce source returned an unusable nonce: {nonce!r}")
        message = self.message(request.method or "GET", request.url or "", timestamp, nonce,
                               body_bytes(request, "WechatPaySigner"))
        signature = base64.b64encode(self._key.sign(message, PKCS1v15(), SHA256())).decode()
        request.headers["Authorization"] = (
            f'{SCHEMA} mchid="{self.mchid}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{timestamp}",serial_no="{self.serial_no}"'
        )


class WechatPayRules:
    """The vendor's basic rules for every attempt, then the merchant signature.

    Example::

        rules = WechatPayRules(signer, platform_serial="PUB_KEY_ID_0114...")
        rules.sign(prepared)

    Sets ``Accept: application/json`` (in place of requests' ``*/*``), ``Content-Type:
    application/json`` on a body that has none, and, in public-key mode,
    ``Wechatpay-Serial`` with the platform key id (as the official SDK sends it); headers
    the caller set are kept.  None of these headers is signed, so the order is free.
    """

    def __init__(self, signer: Optional[WechatPaySigner] = None,
                 platform_serial: Optional[str] = None) -> None:
        self.signer = signer
        self.platform_serial = platform_serial

    def __repr__(self) -> str:
        return f"WechatPayRules(signer={self.signer!r}, platform_serial={self.platform_serial!r})"

    def sign(self, request: requests.PreparedRequest) -> None:
        """Set the headers the vendor requires, then sign (when there is a signer)."""
        headers = request.headers
        if headers.get("Accept") in (None, "", "*/*"):
            headers["Accept"] = "application/json"
        if request.body and not headers.get("Content-Type"):
            headers["Content-Type"] = "application/json"
        if self.platform_serial and not headers.get("Wechatpay-Serial"):
            headers["Wechatpay-Serial"] = self.platform_serial
        if self.signer is not None:
            self.signer.sign(request)


# Downloads WeChat Pay does not sign (the official SDK skips them too); a bill's integrity is
# checked against the hash_value of the signed response that gave its download_url.
_UNSIGNED_DOWNLOADS = ("/v3/billdownload/file",)
_UNSIGNED_DOWNLOAD_PREFIXES = ("/v3/merchant-service/images/",)
# Where a response that failed verification keeps its error until send() raises it.
_SIGNATURE_ERROR = "_smartretry_signature_error"


def _is_unsigned_download(request: Optional[requests.PreparedRequest]) -> bool:
    if request is None or (request.method or "GET").upper() != "GET":
        return False
    path = urlsplit(request.url or "").path
    return path in _UNSIGNED_DOWNLOADS or path.startswith(_UNSIGNED_DOWNLOAD_PREFIXES)


class WechatPayAdapter(SmartRetryAdapter):
    """The WeChat Pay adapter: every 2xx is checked against the platform's signature.

    Example::

        verifier = PlatformVerifier(public_key=pub_key_pem, public_key_id="PUB_KEY_ID_...")
        adapter = WechatPayAdapter(policy, verifier=verifier)

    A 2xx that fails verification (unsigned, unknown ``Wechatpay-Serial``, tampered body,
    another key, stale ``Wechatpay-Timestamp``) is classified inside its attempt as a
    permanent failure, so it is never retried and its events say so; ``send`` then raises
    :class:`~requests_smartretry.ResponseSignatureError` instead of returning it.  Other
    statuses are classified as by :class:`SmartRetryAdapter`.  Bill and image downloads
    (unsigned by the vendor) are not checked.  Build it with :func:`payment_adapter`.
    """

    __attrs__ = [*SmartRetryAdapter.__attrs__, "verifier"]  # noqa: RUF012 - requests' convention

    def __init__(self, policy: Optional[RetryPolicy] = None, *,
                 verifier: Optional[PlatformVerifier] = None,
                 **options: Unpack[SessionOptions]) -> None:
        if verifier is not None and not isinstance(verifier, PlatformVerifier):
            raise TypeError(f"verifier must be a PlatformVerifier or None, got {verifier!r}")
        self.verifier = verifier
        super().__init__(policy, **options)

    def classify_response(self, response: requests.Response) -> Classification:
        """The vendor's verdict, except that a 2xx failing verification, or a redirect
        (whose target nothing may verify), is final."""
        verdict = super().classify_response(response)
        if self.verifier is None or _is_unsigned_download(response.request) \
                or _SDK_SKIPS_VERIFY.get():
            return verdict
        if response.is_redirect:
            # The session would follow it, possibly to an origin this adapter is not
            # mounted on, and hand back that origin's 2xx unverified.
            error = _rejected("response", "redirect", f"HTTP {response.status_code} redirect; "
                             f"WeChat Pay API answers are never redirects, and the answer "
                             f"at its Location would not be verified")
        elif 200 <= response.status_code < 300:
            try:
                self.verifier.verify(response.headers, response.content)
            except ResponseSignatureError as exc:
                error = exc
            else:
                return verdict
        else:
            return verdict
        error.request = response.request
        error.response = response
        # Nobody (the caller via error.response, hooks via their events) gets the body.
        response._content = b""
        response._content_consumed = True  # type: ignore[attr-defined]  # not in the stubs
        setattr(response, _SIGNATURE_ERROR, error)
        return Classification(Verdict.PERMANENT, f"HTTP {response.status_code} signature "
                              f"check failed: {error.check}")

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """As :meth:`SmartRetryAdapter.send`; raises ``ResponseSignatureError`` for a 2xx
        that failed verification (never returned as success).  A verified request's body is
        read within the attempt deadline even with ``stream=True`` (it is read to verify it
        anyway); unsigned downloads stream as asked."""
        if self.verifier is not None and not _is_unsigned_download(request) \
                and not _SDK_SKIPS_VERIFY.get():
            if args:
                args = (False, *args[1:])
            else:
                kwargs["stream"] = False
        response = super().send(request, *args, **kwargs)
        error = response.__dict__.pop(_SIGNATURE_ERROR, None)
        if error is None:
            return response
        response.close()
        attach_history(error, getattr(response, "retry_history", ()))
        raise error


_unverified_warned = threading.Event()


def _warn_unverified() -> None:
    if _unverified_warned.is_set():
        return
    _unverified_warned.set()
    _log.warning(
        "requests_smartretry: WeChat Pay responses are NOT verified: a forged or tampered "
        "2xx is returned as success. Pass platform_public_key= with platform_public_key_id= "
        "(public-key mode) or platform_certificates= to payment_session()/payment_adapter().")


def _platform_verifier(
    public_key: Optional[PemInput],
    public_key_id: Optional[str],
    certificates: Optional[Mapping[str, PemInput]],
    clock: Callable[[], float],
) -> Optional[PlatformVerifier]:
    if public_key is None and public_key_id is None and certificates is None:
        _warn_unverified()
        return None
    return PlatformVerifier(public_key=public_key, public_key_id=public_key_id,
                            certificates=certificates, clock=clock)


def _payment_policy(
    rules: WechatPayRules, endpoint: Optional[str], backup: Optional[str], lang: str
) -> RetryPolicy:
    return RetryPolicy(
        service=SERVICE_KEY,
        classify_response=classify_wechatpay_response,
        name_request=functools.partial(name_wechatpay_request, lang=lang),
        idempotent=order_is_idempotent,
        prepare_attempt=AttemptPreparer(rules, primary=endpoint if backup else None,
                                        backup=backup),
    )


def payment_adapter(
    mchid: Optional[str] = None,
    serial_no: Optional[str] = None,
    private_key: Union[str, bytes, Any, None] = None,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    backup_endpoint: Optional[str] = _BACKUP_OF_DEFAULT,
    platform_public_key: Optional[PemInput] = None,
    platform_public_key_id: Optional[str] = None,
    platform_certificates: Optional[Mapping[str, PemInput]] = None,
    sign_clock: Callable[[], float] = time.time,
    nonce: Callable[[], str] = _default_nonce,
    **options: Unpack[SessionOptions],
) -> SmartRetryAdapter:
    """A :class:`SmartRetryAdapter` for WeChat Pay v3: the vendor's error codes, order
    idempotency by ``out_trade_no``, backup-domain failover, the vendor's headers, (with
    merchant credentials) a fresh ``WECHATPAY2-SHA256-RSA2048`` signature per attempt and
    (with platform keys) verification of every 2xx.

    Example::

        adapter = payment_adapter(mchid="1900000001", serial_no="5157F09E...",
                                  private_key=pem_text,
                                  platform_public_key=open("pub_key.pem").read(),
                                  platform_public_key_id="PUB_KEY_ID_0114...")
        session = requests.Session()
        session.mount("https://api.mch.weixin.qq.com/", adapter)
        session.mount("https://api2.mch.weixin.qq.com/", adapter)

    An order POST is resent after it may have reached the server only when its body
    carries ``out_trade_no``.  After a connection failure or attempt timeout on
    ``endpoint``, the call's next attempts go to ``backup_endpoint`` (``None`` opts out).
    By default that is WeChat Pay's backup domain only when ``endpoint`` is its production
    domain: with another ``endpoint`` (staging, a mock) there is no backup unless given.

    Verification: ``platform_public_key`` (PEM) with ``platform_public_key_id``
    (``PUB_KEY_ID_…``; also sent as ``Wechatpay-Serial``), or ``platform_certificates``
    (serial → PEM certificate), or both during WeChat Pay's switch from certificates to
    public keys.  Every 2xx must then carry a valid ``Wechatpay-Signature`` by the key that
    ``Wechatpay-Serial`` names and a ``Wechatpay-Timestamp`` within 5 minutes of
    ``sign_clock``; otherwise :class:`~requests_smartretry.ResponseSignatureError` is
    raised, after exactly one request (it is never retried), as it is for a redirect.
    Without platform keys a one-time WARNING says responses are not verified.
    """
    endpoint = check_endpoint("endpoint", endpoint)
    backup_endpoint = _backup_for(endpoint, backup_endpoint)
    verifier = _platform_verifier(platform_public_key, platform_public_key_id,
                                  platform_certificates, sign_clock)
    return _adapter_with(verifier, mchid, serial_no, private_key, endpoint, backup_endpoint,
                         sign_clock, nonce, options)


def _adapter_with(verifier: Optional[PlatformVerifier], mchid: Optional[str],
                  serial_no: Optional[str], private_key: Any, endpoint: str,
                  backup: Optional[str], sign_clock: Callable[[], float],
                  nonce: Callable[[], str], options: Any) -> SmartRetryAdapter:
    """:func:`payment_adapter` with its endpoints checked and its verifier built."""
    signer = None
    if mchid is not None or serial_no is not None or private_key is not None:
        signer = WechatPaySigner(mchid, serial_no, private_key,  # type: ignore[arg-type]
                                 clock=sign_clock, nonce=nonce)
    rules = WechatPayRules(signer, verifier.public_key_id if verifier is not None else None)
    policy = _payment_policy(rules, endpoint, backup, str(options.get("lang", "zh")))
    return build_adapter(policy, options, functools.partial(WechatPayAdapter,
                                                            verifier=verifier))


def payment_session(
    mchid: str,
    serial_no: str,
    private_key: Union[str, bytes, Any],
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    backup_endpoint: Optional[str] = _BACKUP_OF_DEFAULT,
    platform_public_key: Optional[PemInput] = None,
    platform_public_key_id: Optional[str] = None,
    platform_certificates: Optional[Mapping[str, PemInput]] = None,
    sign_clock: Callable[[], float] = time.time,
    nonce: Callable[[], str] = _default_nonce,
    **options: Unpack[SessionOptions],
) -> BaseURLSession:
    """A session for WeChat Pay v3, signed per attempt, verified, with backup failover.

    Example::

        session = payment_session(mchid="1900000001", serial_no="5157F09E...",
                                  private_key=open("apiclient_key.pem").read(),
                                  platform_public_key=open("pub_key.pem").read(),
                                  platform_public_key_id="PUB_KEY_ID_0114...")
        response = session.post("/v3/pay/transactions/jsapi", json={
            "appid": "wx...", "mchid": "1900000001", "description": "...",
            "out_trade_no": "ORDER-20261127-0001", "notify_url": "https://...",
            "amount": {"total": 100}, "payer": {"openid": "..."}})

    See :func:`payment_adapter` for the retry and verification rules.
    """
    check_credential("mchid", mchid)
    endpoint = check_endpoint("endpoint", endpoint)
    backup_endpoint = _backup_for(endpoint, backup_endpoint)
    adapter = payment_adapter(mchid, serial_no, private_key, endpoint=endpoint,
                              backup_endpoint=backup_endpoint,
                              platform_public_key=platform_public_key,
                              platform_public_key_id=platform_public_key_id,
                              platform_certificates=platform_certificates,
                              sign_clock=sign_clock, nonce=nonce, **options)
    return preset_session(endpoint, adapter, backup_endpoint)


def parse_notification(
    headers: Any,
    body: Union[bytes, str],
    *,
    platform_public_key: Optional[PemInput] = None,
    platform_public_key_id: Optional[str] = None,
    platform_certificates: Optional[Mapping[str, PemInput]] = None,
    api_v3_key: Union[str, bytes],
) -> dict[str, Any]:
    """The decrypted ``resource`` of a WeChat Pay notification (what WeChat Pay POSTs to
    your ``notify_url``), after checking its signature.

    Example (Flask)::

        paid = parse_notification(request.headers, request.get_data(),
                                  platform_public_key=PUB_KEY_PEM,
                                  platform_public_key_id="PUB_KEY_ID_0114...",
                                  api_v3_key=API_V3_KEY)
        paid["out_trade_no"], paid["trade_state"]      # "SUCCESS"

    ``body`` must be the raw request body, byte for byte (the signature covers it).  The
    signature rule is the responses' (``Wechatpay-Serial`` chooses the platform key,
    ``TIMESTAMP\nNONCE\nBODY\n``, RSA-SHA256, a timestamp within 5 minutes); the
    resource is decrypted with AEAD_AES_256_GCM under ``api_v3_key``, its nonce and
    associated data.  A bad signature, a stale timestamp or a failed decryption raises
    :class:`~requests_smartretry.ResponseSignatureError` whose ``check`` names the check
    (answer WeChat Pay with a 4xx/5xx: it sends the notification again later).
    Misconfiguration (no key, a bad PEM, an APIv3 key that is not 32 bytes) raises
    ``ValueError``/``TypeError``.  With ``platform_public_key`` but no
    ``platform_public_key_id`` the key checks every serial that is not a certificate's.
    """
    key = check_api_v3_key(api_v3_key)
    verifier = PlatformVerifier(public_key=platform_public_key,
                                public_key_id=platform_public_key_id,
                                certificates=platform_certificates, require_key_id=False)
    raw = raw_body(body)
    verifier.verify(headers, raw, what="notification")
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        envelope = None
    resource = envelope.get("resource") if isinstance(envelope, dict) else None
    result = decrypt_json(resource, key)
    if not isinstance(result, dict):
        raise ResponseSignatureError(
            "WeChat Pay notification rejected (decryption check): the decrypted resource "
            "is not a JSON object", check="decryption")
    return result


# -- the wechatpayv3 SDK path ---------------------------------------------------------------

_SDK_SESSION_SLOT = "_smartretry_session"
_SDK_CORE_CLASSES: dict[type, type] = {}
# Set while a mounted SDK object sends a request it does not verify itself (skip_verify:
# its download of the platform certificates, whose content the APIv3 key authenticates).
_SDK_SKIPS_VERIFY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "requests_smartretry_wechatpay_sdk_skips_verify", default=False)


def mount_on_wechatpay(
    pay: Any,
    *,
    endpoint: Optional[str] = None,
    backup_endpoint: Optional[str] = _BACKUP_OF_DEFAULT,
    platform_public_key: Optional[PemInput] = None,
    platform_public_key_id: Optional[str] = None,
    platform_certificates: Optional[Mapping[str, PemInput]] = None,
    **options: Unpack[SessionOptions],
) -> Any:
    """Give one ``wechatpayv3.WeChatPay`` object the payment preset's whole policy; returns
    ``pay``.

    Example::

        from wechatpayv3 import WeChatPay, WeChatPayType

        pay = mount_on_wechatpay(WeChatPay(
            wechatpay_type=WeChatPayType.JSAPI, mchid=MCHID, private_key=KEY_PEM,
            cert_serial_no=SERIAL, appid=APPID, apiv3_key=APIV3_KEY,
            public_key=PUB_KEY_PEM, public_key_id="PUB_KEY_ID_0114..."))
        code, message = pay.pay(description="...", out_trade_no="ORDER-1", amount={...},
                                payer={"openid": "..."})
        sdk_session(pay).close()             # at shutdown: its sockets, closed at once

    Every call of that object (``pay``, ``query``, ``close``, refunds…) then goes through a
    :func:`payment_session` built from the SDK object's own merchant id, serial number,
    private key, gateway and platform keys (or the ``platform_*`` given here): the
    vendor's code table, a fresh signature per attempt, failover to ``backup_endpoint``
    (by default WeChat Pay's backup domain, only when the endpoint is its production
    domain), verification of every 2xx, and the policy's 30 s attempt deadline (the SDK's
    ``timeout`` is not used).  ``endpoint`` defaults to the SDK object's own gateway
    (``pay._core._gate_way`` when mounted).  Without ``platform_*`` the verification
    follows the SDK object's platform keys as they are at each response: its public key,
    and the platform certificates it holds, which it downloads again (as the SDK does)
    when an answer names a certificate it does not hold yet (WeChat Pay rotates them).
    The SDK's return values are unchanged (``(status_code, text)``); a 2xx failing
    verification raises :class:`~requests_smartretry.ResponseSignatureError`.  Only this
    object changes: its ``_core`` becomes a subclass of the SDK's ``Core`` (nothing is
    patched process-wide).  Uploads with ``files=`` (media upload) keep the SDK's own
    sending.  ``options``: policy fields and adapter keywords, as for
    :func:`payment_session`.
    """
    core = getattr(pay, "_core", None)
    needed = ("request", "_mchid", "_cert_serial_no", "_private_key")
    if core is None or not all(hasattr(core, name) for name in needed):
        raise TypeError(f"pay must be a wechatpayv3.WeChatPay object, got {type(pay).__name__}")
    check_credential("mchid", core._mchid)
    endpoint = check_endpoint("endpoint", endpoint if endpoint is not None
                              else getattr(core, "_gate_way", None) or DEFAULT_ENDPOINT)
    backup_endpoint = _backup_for(endpoint, backup_endpoint)
    verifier: Optional[PlatformVerifier]
    if platform_public_key is None and platform_certificates is None:
        verifier = _SdkPlatformKeys(core)
    else:
        verifier = _platform_verifier(platform_public_key, platform_public_key_id,
                                      platform_certificates, time.time)
    adapter = _adapter_with(verifier, core._mchid, core._cert_serial_no, core._private_key,
                            endpoint, backup_endpoint, time.time, _default_nonce, options)
    core.__dict__[_SDK_SESSION_SLOT] = preset_session(endpoint, adapter, backup_endpoint)
    core.__class__ = _sdk_core_class(type(core))
    return pay


def sdk_session(pay: Any) -> BaseURLSession:
    """The payment session a :func:`mount_on_wechatpay` object sends through: for
    ``stats_of(...)``, and ``close()`` (its pooled sockets closed at once).

    Example::

        stats_of(sdk_session(pay)).snapshot()
        sdk_session(pay).close()
    """
    session = getattr(getattr(pay, "_core", None), "__dict__", {}).get(_SDK_SESSION_SLOT)
    if session is None:
        raise TypeError(f"pay must be a WeChatPay object given to mount_on_wechatpay(), got "
                        f"{type(pay).__name__}")
    return session  # type: ignore[no-any-return]


class _SdkPlatformKeys(PlatformVerifier):
    """The platform keys a ``wechatpayv3`` ``Core`` holds at each response: its public
    key and its platform certificates, downloaded again through the SDK (as its own
    verification does) when an answer names a serial it does not hold.

    Each check uses an immutable :class:`PlatformVerifier` built from the SDK's
    certificates as they are, rebuilt when they change; one download at a time.
    """

    def __init__(self, core: Any) -> None:  # the keys are the SDK's: no super().__init__
        from cryptography.hazmat.primitives import serialization

        self._core = core
        public_key = getattr(core, "_public_key", None)
        self._public_pem = None if public_key is None else public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_key_id = getattr(core, "_public_key_id", None) \
            if public_key is not None else None
        self._lock = forksafe.lock()  # guards the snapshot
        self._download_lock = forksafe.lock()
        self._seen: Optional[tuple[Any, ...]] = None
        self._snapshot: Optional[PlatformVerifier] = None

    def __repr__(self) -> str:
        return f"_SdkPlatformKeys(public_key_id={self.public_key_id!r}, {self._current()!r})"

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a session mounted on a wechatpayv3 object cannot be pickled")

    def _current(self) -> Optional[PlatformVerifier]:
        """A verifier of the SDK's keys as they are now (``None``: it holds none)."""
        from cryptography.hazmat.primitives import serialization

        certificates = tuple(getattr(self._core, "_certificates", None) or ())
        with self._lock:
            if certificates != self._seen:
                by_serial = {format(c.serial_number, "X"):
                             c.public_bytes(serialization.Encoding.PEM) for c in certificates}
                self._snapshot = None if self._public_pem is None and not by_serial else \
                    PlatformVerifier(public_key=self._public_pem,
                                     public_key_id=self.public_key_id,
                                     certificates=by_serial or None, require_key_id=False)
                self._seen = certificates
            return self._snapshot

    def _download(self, serial: str) -> None:
        """The SDK's download of the platform certificates, unless another thread's just
        brought the one ``serial`` names."""
        with self._download_lock:
            current = self._current()
            if current is not None and current.key_for(serial) is not None:
                return
            try:
                self._core._update_certificates()
            except Exception as exc:  # the answer is then refused as unknown, not raised
                _log.warning("requests_smartretry: downloading WeChat Pay's platform "
                             "certificates failed: %s", type(exc).__name__)

    def verify(self, headers: Any, body: Union[bytes, str], *, what: str = "response") -> None:
        """As :meth:`PlatformVerifier.verify`, with the SDK's keys as they are now."""
        current = self._current()
        serial = wechatpay_headers(headers).get("serial") or ""
        if serial and (current is None or current.key_for(serial) is None) \
                and serial != self.public_key_id:
            self._download(serial)
            current = self._current()
        if current is None:
            raise _rejected(what, "serial", "the wechatpayv3 object holds no platform key "
                            "(no public key, and no platform certificate could be downloaded)")
        current.verify(headers, body, what=what)


def _sdk_core_class(cls: type) -> type:
    if cls.__dict__.get("_smartretry_mounted"):
        return cls
    mounted = _SDK_CORE_CLASSES.get(cls)
    if mounted is None:
        mounted = _SDK_CORE_CLASSES[cls] = type(cls.__name__, (cls,), {
            "request": _sdk_request, "_smartretry_mounted": True,
            "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__})
    return mounted


def _sdk_request(self: Any, path: str, method: Any = None, data: Any = None,
                 skip_verify: bool = False, sign_data: Any = None, files: Any = None,
                 cipher_data: bool = False, headers: Optional[dict[str, str]] = None) -> Any:
    """``Core.request`` through the payment session: the same arguments and return value
    (``(status_code, text or bytes)``), with the preset's retries, signing, failover and
    verification."""
    if files is not None or sign_data is not None:  # multipart uploads: the SDK's way
        return super(type(self), self).request(path, method, data, skip_verify, sign_data,
                                               files, cipher_data, headers)
    session: BaseURLSession = self.__dict__[_SDK_SESSION_SLOT]
    verb = str(getattr(method, "value", method or "GET")).upper()
    sent = dict(headers or {})
    sent.setdefault("Accept", "application/json")
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    if cipher_data and "Wechatpay-Serial" not in sent and not getattr(self, "_public_key_id",
                                                                         None):
        sent["Wechatpay-Serial"] = format(self._last_certificate().serial_number, "X")
    skipping = _SDK_SKIPS_VERIFY.set(bool(skip_verify))
    try:
        response = session.request(verb, path, json=data if verb in ("POST", "PATCH", "PUT")
                                   else None, headers=sent,
                                   proxies=getattr(self, "_proxy", None))
    finally:
        _SDK_SKIPS_VERIFY.reset(skipping)
    with response:  # the body is read: its connection goes back to the pool now
        content_type = response.headers.get("Content-Type", "")
        return response.status_code, (response.text if "application/json" in content_type
                                      else response.content)
