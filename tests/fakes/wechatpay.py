"""A fake WeChat Pay v3 API: verifies RSA signatures, refuses replayed nonces, keeps orders."""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.hashes import SHA256

from requests_smartretry.faultserver import RecordedRequest

from ._scripted import ScriptedFake

JSAPI = "/v3/pay/transactions/jsapi"
_AUTH = re.compile(r'^WECHATPAY2-SHA256-RSA2048 (?P<fields>.+)$')
_FIELD = re.compile(r'(\w+)="([^"]*)"')


def pay_error(code: str, message: str = "error") -> dict[str, Any]:
    """A WeChat Pay v3 error body."""
    return {"code": code, "message": message}


class FakeWechatPay(ScriptedFake):
    """``api.mch.weixin.qq.com`` on loopback: JSAPI order placement.

    Authentication as the vendor does it: the signature over
    ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n`` must verify with the merchant's
    public key, the timestamp be within 5 minutes, and a nonce is accepted once.  Orders
    follow the ``out_trade_no`` rule: an identical repeat refreshes the prepay_id, a changed
    one is OUT_TRADE_NO_USED; an order without ``out_trade_no`` always creates a new one.
    """

    def __init__(self, public_key: RSAPublicKey, mchid: str = "1900000001") -> None:
        super().__init__()
        self.public_key = public_key
        self.mchid = mchid
        self.orders: list[dict[str, Any]] = []
        self.seen_nonces: set[str] = set()
        self.verified: list[dict[str, str]] = []  # the Authorization fields that verified
        self._prepay = itertools.count(1)

    def script_key(self, request: RecordedRequest) -> str:
        return request.path.split("?", 1)[0]

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
