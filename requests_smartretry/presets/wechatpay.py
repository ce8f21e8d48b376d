"""WeChat Pay v3 (JSAPI orders): RSA signing, the error-code table, failover, the preset.

Facts (``VENDORS.md``): ``POST /v3/pay/transactions/jsapi`` places an order; errors are an
HTTP status plus ``{"code", "message"}`` (spellings vary between doc versions, both are
matched); ``out_trade_no`` makes an order placement idempotent; the backup domain
``api2.mch.weixin.qq.com`` is where to go on outage or timeout.  ``cryptography`` (the
``wechatpay`` extra) is imported only when a signer is built.
"""

from __future__ import annotations

import base64
import functools
import json
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Optional, Union
from urllib.parse import urlsplit

import requests

from ..adapter import SmartRetryAdapter
from ..classify import Classification
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

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..options import SessionOptions

__all__ = [
    "WechatPaySigner",
    "classify_wechatpay_response",
    "name_wechatpay_request",
    "order_is_idempotent",
    "payment_adapter",
    "payment_session",
]

SERVICE_KEY = "wechatpay"
DEFAULT_ENDPOINT = "https://api.mch.weixin.qq.com"
DEFAULT_BACKUP_ENDPOINT = "https://api2.mch.weixin.qq.com"
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
    try:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "WeChat Pay signing needs the 'wechatpay' extra: "
            "pip install 'requests-smartretry[wechatpay]'"
        ) from exc
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


def _payment_policy(
    signer: Optional[WechatPaySigner], endpoint: Optional[str], backup: Optional[str], lang: str
) -> RetryPolicy:
    preparer: Optional[AttemptPreparer] = None
    if signer is not None or backup is not None:
        preparer = AttemptPreparer(signer, primary=endpoint if backup else None, backup=backup)
    return RetryPolicy(
        service=SERVICE_KEY,
        classify_response=classify_wechatpay_response,
        name_request=functools.partial(name_wechatpay_request, lang=lang),
        idempotent=order_is_idempotent,
        prepare_attempt=preparer,
    )


def payment_adapter(
    mchid: Optional[str] = None,
    serial_no: Optional[str] = None,
    private_key: Union[str, bytes, Any, None] = None,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    backup_endpoint: Optional[str] = DEFAULT_BACKUP_ENDPOINT,
    sign_clock: Callable[[], float] = time.time,
    nonce: Callable[[], str] = _default_nonce,
    **options: Unpack[SessionOptions],
) -> SmartRetryAdapter:
    """A :class:`SmartRetryAdapter` for WeChat Pay v3: the vendor's error codes, order
    idempotency by ``out_trade_no``, backup-domain failover and (with merchant
    credentials) a fresh ``WECHATPAY2-SHA256-RSA2048`` signature per attempt.

    Example::

        adapter = payment_adapter(mchid="1900000001", serial_no="5157F09E...",
                                  private_key=pem_text)
        session = requests.Session()
        session.mount("https://api.mch.weixin.qq.com/", adapter)
        session.mount("https://api2.mch.weixin.qq.com/", adapter)

    An order POST is resent after it may have reached the server only when its body
    carries ``out_trade_no``.  After a connection failure or attempt timeout on
    ``endpoint``, the call's next attempts go to ``backup_endpoint`` (``None`` opts out).
    """
    endpoint = check_endpoint("endpoint", endpoint)
    if backup_endpoint is not None:
        backup_endpoint = check_endpoint("backup_endpoint", backup_endpoint)
    signer = None
    if mchid is not None or serial_no is not None or private_key is not None:
        signer = WechatPaySigner(mchid, serial_no, private_key,  # type: ignore[arg-type]
                                 clock=sign_clock, nonce=nonce)
    policy = _payment_policy(signer, endpoint, backup_endpoint, str(options.get("lang", "zh")))
    return build_adapter(policy, options)


def payment_session(
    mchid: str,
    serial_no: str,
    private_key: Union[str, bytes, Any],
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    backup_endpoint: Optional[str] = DEFAULT_BACKUP_ENDPOINT,
    sign_clock: Callable[[], float] = time.time,
    nonce: Callable[[], str] = _default_nonce,
    **options: Unpack[SessionOptions],
) -> BaseURLSession:
    """A session for WeChat Pay v3, signed per attempt, with backup-domain failover.

    Example::

        session = payment_session(mchid="1900000001", serial_no="5157F09E...",
                                  private_key=open("apiclient_key.pem").read())
        response = session.post("/v3/pay/transactions/jsapi", json={
            "appid": "wx...", "mchid": "1900000001", "description": "...",
            "out_trade_no": "ORDER-20261127-0001", "notify_url": "https://...",
            "amount": {"total": 100}, "payer": {"openid": "..."}})

    See :func:`payment_adapter` for the retry rules.
    """
    check_credential("mchid", mchid)
    adapter = payment_adapter(mchid, serial_no, private_key, endpoint=endpoint,
                              backup_endpoint=backup_endpoint, sign_clock=sign_clock,
                              nonce=nonce, **options)
    return preset_session(endpoint, adapter, backup_endpoint)
