"""A fake WeChat Pay v3 API: verifies RSA signatures, refuses replayed nonces, keeps orders,
and signs its answers with a platform key (or forges them, on request)."""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import os
import re
import time
import uuid
from typing import Any, Optional

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.x509.oid import NameOID

from requests_smartretry.faultserver import RecordedRequest

from ._scripted import ScriptedFake

JSAPI = "/v3/pay/transactions/jsapi"
PUBLIC_KEY_ID = "PUB_KEY_ID_0114232134912410000000000000"
_AUTH = re.compile(r'^WECHATPAY2-SHA256-RSA2048 (?P<fields>.+)$')
_FIELD = re.compile(r'(\w+)="([^"]*)"')

#: What a forging fake does to its answers (see :meth:`FakeWechatPay.forge`).
FORGERIES = ("tampered", "unsigned", "wrong_key", "unknown_serial", "stale")


def pay_error(code: str, message: str = "error") -> dict[str, Any]:
    """A WeChat Pay v3 error body."""
    return {"code": code, "message": message}


def public_pem(key: RSAPrivateKey) -> str:
    """The PEM public half of ``key`` (what the merchant platform lets you download)."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def platform_certificate(key: RSAPrivateKey, serial: int) -> str:
    """A self-signed PEM certificate for ``key`` with serial number ``serial``, valid now."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=365))
                   .sign(key, SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def platform_headers(key: RSAPrivateKey, serial: str, body: bytes, *,
                     timestamp: Optional[int] = None,
                     nonce: Optional[str] = None) -> dict[str, str]:
    """The ``Wechatpay-*`` headers WeChat Pay puts on an answer (or notification) ``body``."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or uuid.uuid4().hex
    message = f"{stamp}\n{nonce}\n".encode() + body + b"\n"
    return {"Wechatpay-Timestamp": stamp, "Wechatpay-Nonce": nonce,
            "Wechatpay-Serial": serial, "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
            "Wechatpay-Signature": base64.b64encode(
                key.sign(message, PKCS1v15(), SHA256())).decode()}


def forge(mode: Optional[str], key: RSAPrivateKey, serial: str, body: bytes,
          other_key: RSAPrivateKey) -> tuple[bytes, dict[str, str]]:
    """``body`` and its headers, signed as WeChat Pay does (``mode=None``) or forged one way
    of :data:`FORGERIES`."""
    if mode not in (None, *FORGERIES):
        raise ValueError(f"unknown forgery {mode!r}")
    if mode == "unsigned":
        return body, {}
    if mode == "unknown_serial":  # a serial of the same kind as the real one, not configured
        serial = ("PUB_KEY_ID_0000000000000000000000000000" if serial.startswith("PUB_KEY_ID_")
                  else "1234567890ABCDEF1234567890ABCDEF12345678")
    headers = platform_headers(other_key if mode == "wrong_key" else key, serial, body,
                               timestamp=int(time.time()) - 600 if mode == "stale" else None)
    if mode == "tampered":
        body = body.replace(b"wx-prepay-", b"wx-FORGED-").replace(b"SUCCESS", b"REFUND")
    return body, headers


def notification(resource: dict[str, Any], api_v3_key: str,
                 event_type: str = "TRANSACTION.SUCCESS") -> bytes:
    """A notify_url body built the way WeChat Pay builds it: ``resource`` as JSON,
    AEAD_AES_256_GCM-encrypted with the APIv3 key (tag appended, base64)."""
    nonce, associated = os.urandom(6).hex(), "transaction"
    sealed = AESGCM(api_v3_key.encode()).encrypt(
        nonce.encode(), json.dumps(resource, ensure_ascii=False).encode(), associated.encode())
    envelope = {"id": str(uuid.uuid4()), "create_time": "2026-12-01T10:00:00+08:00",
                "resource_type": "encrypt-resource", "event_type": event_type,
                "summary": "支付成功",
                "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                             "ciphertext": base64.b64encode(sealed).decode(),
                             "associated_data": associated, "nonce": nonce}}
    return json.dumps(envelope, ensure_ascii=False).encode()


def new_key() -> RSAPrivateKey:
    """A fresh 2048-bit RSA key (WeChat Pay's size)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeWechatPay(ScriptedFake):
    """``api.mch.weixin.qq.com`` on loopback: JSAPI order placement.

    Authentication as the vendor does it: the signature over
    ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n`` must verify with the merchant's
    public key, the timestamp be within 5 minutes, and a nonce is accepted once.  Orders
    follow the ``out_trade_no`` rule: an identical repeat refreshes the prepay_id, a changed
    one is OUT_TRADE_NO_USED; an order without ``out_trade_no`` always creates a new one.
    """

    def __init__(self, public_key: RSAPublicKey, mchid: str = "1900000001", *,
                 platform_key: Optional[RSAPrivateKey] = None,
                 platform_serial: str = PUBLIC_KEY_ID,
                 other_key: Optional[RSAPrivateKey] = None) -> None:
        super().__init__()
        self.public_key = public_key
        self.mchid = mchid
        self.platform_key = platform_key
        self.platform_serial = platform_serial
        self.other_key = other_key
        self.forgery: Optional[str] = None
        self.orders: list[dict[str, Any]] = []
        self.seen_nonces: set[str] = set()
        self.verified: list[dict[str, str]] = []  # the Authorization fields that verified
        #: What ``GET /v3/certificates`` lists (PEM certificates), encrypted under
        #: ``api_v3_key`` as WeChat Pay does.
        self.certificates: list[str] = []
        self.api_v3_key = "a" * 32
        self._prepay = itertools.count(1)

    def script_key(self, request: RecordedRequest) -> str:
        return request.path.split("?", 1)[0]

    def forge(self, mode: Optional[str]) -> None:
        """Forge every later answer one way of :data:`FORGERIES` (``None``: sign honestly)."""
        if mode is not None and (mode not in FORGERIES or self.platform_key is None
                                 or (mode == "wrong_key" and self.other_key is None)):
            raise ValueError(f"cannot forge {mode!r} (needs a platform key, and other_key "
                             f"for wrong_key)")
        self.forgery = mode

    def finish_reply(self, status: int, payload: bytes) -> tuple[bytes, dict[str, str]]:
        if self.platform_key is None:
            return payload, {}  # a fake of the days before verification: nothing signed
        return forge(self.forgery, self.platform_key, self.platform_serial, payload,
                     self.other_key or self.platform_key)  # other_key is set for wrong_key

    def reject(self, request: RecordedRequest) -> tuple[int, Any] | None:
        match = _AUTH.match(request.headers.get("authorization", ""))
        if match is None:
            return 401, pay_error("SIGN_ERROR", "no WECHATPAY2-SHA256-RSA2048 authorization")
        fields = dict(_FIELD.findall(match["fields"]))
        if fields.get("mchid") != self.mchid or not fields.get("serial_no"):
            return 401, pay_error("SIGN_ERROR", "mchid/serial_no")
        if abs(int(fields.get("timestamp", "0")) - time.time()) > 300:
            return 401, pay_error("SIGN_ERROR", "timestamp expired")
        if fields.get("nonce_str", "") in self.seen_nonces:
            return 401, pay_error("SIGN_ERROR", "nonce replayed")
        message = (f"{request.method}\n{request.path}\n{fields['timestamp']}\n"
                   f"{fields['nonce_str']}\n").encode() + request.body + b"\n"
        try:
            self.public_key.verify(base64.b64decode(fields.get("signature", "")), message,
                                   PKCS1v15(), SHA256())
        except (InvalidSignature, ValueError):
            return 401, pay_error("SIGN_ERROR", "signature does not verify")
        self.seen_nonces.add(fields["nonce_str"])
        self.verified.append(fields)
        return None

    def act(self, request: RecordedRequest) -> tuple[int, Any]:
        if request.method == "GET" and request.path == "/v3/certificates":
            return 200, {"data": [self._certificate_entry(pem) for pem in self.certificates]}
        if request.method != "POST" or request.path.split("?", 1)[0] != JSAPI:
            return 404, pay_error("NOT_FOUND", request.path)
        order = json.loads(request.body or b"{}")
        number = order.get("out_trade_no")
        for known in self.orders:
            if number and known["order"].get("out_trade_no") == number:
                if known["order"] != order:
                    return 403, pay_error("OUT_TRADE_NO_USED", "changed parameters")
                known["prepay_id"] = f"wx-prepay-{next(self._prepay)}"
                return 200, {"prepay_id": known["prepay_id"]}
        entry = {"order": order, "prepay_id": f"wx-prepay-{next(self._prepay)}"}
        self.orders.append(entry)
        return 200, {"prepay_id": entry["prepay_id"]}

    def _certificate_entry(self, pem: str) -> dict[str, Any]:
        certificate = x509.load_pem_x509_certificate(pem.encode())
        nonce, associated = os.urandom(6).hex(), "certificate"
        sealed = AESGCM(self.api_v3_key.encode()).encrypt(nonce.encode(), pem.encode(),
                                                         associated.encode())
        return {"serial_no": format(certificate.serial_number, "X"),
                "effective_time": "2026-01-01T00:00:00+08:00",
                "expire_time": "2036-01-01T00:00:00+08:00",
                "encrypt_certificate": {"algorithm": "AEAD_AES_256_GCM", "nonce": nonce,
                                        "associated_data": associated,
                                        "ciphertext": base64.b64encode(sealed).decode()}}
