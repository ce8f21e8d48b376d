"""The WeChat Pay platform's half of the protocol: checking what WeChat Pay signs (API
responses and ``notify_url`` notifications) and decrypting notification resources.

Facts (``VENDORS.md``): every 2xx response and every notification carries
``Wechatpay-Signature`` (base64 RSA-SHA256, PKCS#1 v1.5) over
``TIMESTAMP\\nNONCE\\nBODY\\n`` made with the platform key that ``Wechatpay-Serial`` names:
a ``PUB_KEY_ID_…`` id in public-key mode, a platform certificate's serial in certificate
mode.  A 2xx without a signature is to be treated as forged; a ``Wechatpay-Timestamp``
more than 5 minutes from now is stale.  A notification's ``resource`` is
AEAD_AES_256_GCM-encrypted with the merchant's 32-byte APIv3 key.

``cryptography`` (the ``wechatpay`` extra) is imported only when a verifier is built.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

from ..errors import ResponseSignatureError

__all__ = ["SIGNATURE_TYPE", "PlatformVerifier", "check_api_v3_key", "decrypt_resource",
           "raw_body"]

SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
PUBLIC_KEY_ID_PREFIX = "PUB_KEY_ID_"
#: Seconds a Wechatpay-Timestamp may be away from this machine's clock.
MAX_SKEW = 300.0
RESOURCE_ALGORITHM = "AEAD_AES_256_GCM"
_REQUIRED = ("signature", "timestamp", "nonce", "serial")
_TIMESTAMP = re.compile(r"[0-9]{1,15}")

PemInput = Union[str, bytes, Any]


def require_cryptography(purpose: str) -> Any:
    """``cryptography``'s RSA module, or an ImportError saying which extra to install."""
    try:
        import cryptography.hazmat.primitives.asymmetric.rsa as rsa
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"WeChat Pay {purpose} needs the 'wechatpay' extra: "
            "pip install 'requests-smartretry[wechatpay]'"
        ) from exc
    return rsa


def _pem_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, str):
        return value.strip().encode("ascii", "replace")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).strip()
    raise TypeError(f"{name} must be PEM text, got {type(value).__name__}")


def load_public_key(value: PemInput, name: str = "platform_public_key") -> Any:
    """An RSA public key from PEM text (the platform's ``pub_key.pem``) or a key object."""
    rsa = require_cryptography("verification")
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if isinstance(value, rsa.RSAPublicKey):
        return value
    pem = _pem_bytes(name, value)
    if b"PRIVATE KEY" in pem:
        raise ValueError(f"{name} is a private key; pass WeChat Pay's platform public key "
                         f"(pub_key.pem, -----BEGIN PUBLIC KEY-----)")
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ValueError(f"{name} is not a readable PEM public key "
                         f"(-----BEGIN PUBLIC KEY-----, {len(pem)} bytes given)") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"{name} must be an RSA key, got {type(key).__name__}")
    return key


def load_certificate_key(serial: Any, value: PemInput) -> tuple[int, Any, tuple[float, float]]:
    """(serial number, RSA public key, validity as epoch seconds) of one
    ``platform_certificates`` entry; the mapping's key must be the certificate's own serial
    (hex, as ``Wechatpay-Serial`` carries it)."""
    rsa = require_cryptography("verification")
    from cryptography.x509 import load_pem_x509_certificate

    if not isinstance(serial, str) or not serial.strip():
        raise TypeError(f"platform_certificates keys must be serial numbers (hex strings), "
                        f"got {serial!r}")
    try:
        number = int(serial.strip(), 16)
    except ValueError:
        raise ValueError(f"platform_certificates key {serial!r} is not a hex serial "
                         f"number") from None
    name = f"platform_certificates[{serial!r}]"
    pem = _pem_bytes(name, value)
    try:
        certificate = load_pem_x509_certificate(pem)
    except (ValueError, TypeError):
        raise ValueError(f"{name} is not a readable PEM certificate "
                         f"(-----BEGIN CERTIFICATE-----, {len(pem)} bytes given)") from None
    if certificate.serial_number != number:
        raise ValueError(f"{name} holds the certificate with serial "
                         f"{certificate.serial_number:X}, not {serial!r}")
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"{name} must hold an RSA key, got {type(key).__name__}")
    return number, key, (_utc_seconds(certificate, "not_valid_before"),
                         _utc_seconds(certificate, "not_valid_after"))


def _utc_seconds(certificate: Any, field: str) -> float:
    # cryptography >= 42 has the aware *_utc fields; older ones only naive UTC datetimes.
    aware = getattr(certificate, f"{field}_utc", None)
    moment = aware if aware is not None else \
        getattr(certificate, field).replace(tzinfo=datetime.timezone.utc)
    return float(moment.timestamp())


def _public_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


class PlatformVerifier:
    """Verifies WeChat Pay's signature on a response or a notification.

    Example::

        verifier = PlatformVerifier(public_key=open("pub_key.pem").read(),
                                    public_key_id="PUB_KEY_ID_0114232134912410000000000000")
        verifier.verify(response.headers, response.content)  # or raises

    Give ``public_key`` with ``public_key_id`` (public-key mode), ``certificates`` (serial →
    PEM certificate, certificate mode), or both while WeChat Pay switches a merchant from
    one to the other.  ``Wechatpay-Serial`` chooses the key; an unknown serial is
    refused, and so is a certificate outside its validity (by ``clock``).  With
    ``public_key_id=None`` (allowed only with ``require_key_id=False``) the public key
    checks every serial that is not one of the certificates.

    Immutable after construction, so one verifier serves any number of threads.
    """

    def __init__(
        self,
        *,
        public_key: Optional[PemInput] = None,
        public_key_id: Optional[str] = None,
        certificates: Optional[Mapping[str, PemInput]] = None,
        clock: Callable[[], float] = time.time,
        max_skew: float = MAX_SKEW,
        require_key_id: bool = True,
    ) -> None:
        if public_key is None and public_key_id is not None:
            raise ValueError("platform_public_key_id was given without platform_public_key "
                             "(the pub_key.pem it names)")
        if public_key is None and certificates is None:
            raise ValueError("pass platform_public_key= (with platform_public_key_id=) or "
                             "platform_certificates=")
        self._public_key = None
        self.public_key_id: Optional[str] = None
        if public_key is not None:
            if public_key_id is None and require_key_id:
                raise ValueError("platform_public_key needs platform_public_key_id (the "
                                 "PUB_KEY_ID_… shown with the key in the merchant platform)")
            if public_key_id is not None:
                # Surrounding whitespace (a file's newline) is no part of the id; kept, it
                # would match no Wechatpay-Serial and make an invalid request header.
                if not isinstance(public_key_id, str) or \
                        not public_key_id.strip().startswith(PUBLIC_KEY_ID_PREFIX) or \
                        len(public_key_id.split()) != 1:
                    raise ValueError(f"platform_public_key_id must be the platform's "
                                     f"{PUBLIC_KEY_ID_PREFIX}… id, got {public_key_id!r}")
                self.public_key_id = public_key_id.strip()
            self._public_key = load_public_key(public_key)
        self._certificates: dict[int, Any] = {}
        self._validity: dict[int, tuple[float, float]] = {}
        if certificates is not None:
            if not isinstance(certificates, Mapping) or not certificates:
                raise TypeError(f"platform_certificates must be a non-empty mapping of "
                                f"serial number -> PEM certificate, got "
                                f"{type(certificates).__name__}")
            for serial, pem in certificates.items():
                number, key, self._validity[number] = load_certificate_key(serial, pem)
                self._certificates[number] = key
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self._clock = clock
        self.max_skew = float(max_skew)

    def __repr__(self) -> str:
        serials = ", ".join(f"{n:X}" for n in self._certificates)
        return (f"PlatformVerifier(public_key_id={self.public_key_id!r}, "
                f"certificates=[{serials}])")

    # RSA key objects do not pickle; their PEM does (a pickled session keeps verifying).
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_public_key"] = None if self._public_key is None else _public_pem(self._public_key)
        state["_certificates"] = {n: _public_pem(k) for n, k in self._certificates.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._public_key is not None:
            self._public_key = load_public_key(self._public_key)
        self._certificates = {n: load_public_key(pem, "certificate key")
                              for n, pem in self._certificates.items()}

    def key_for(self, serial: str) -> Optional[Any]:
        """The platform key that ``Wechatpay-Serial: serial`` names, or ``None``."""
        if self._public_key is not None and serial == self.public_key_id:
            return self._public_key
        number = self._certificate_number(serial)
        if number is not None:
            return self._certificates[number]
        if self._public_key is not None and self.public_key_id is None:
            return self._public_key
        return None

    def _certificate_number(self, serial: str) -> Optional[int]:
        """The serial number of the configured certificate ``serial`` names, or ``None``."""
        if self._public_key is not None and serial == self.public_key_id:
            return None
        try:
            number = int(serial, 16)
        except ValueError:
            return None
        return number if number in self._certificates else None

    def verify(self, headers: Any, body: Union[bytes, str], *, what: str = "response") -> None:
        """Raise :class:`~requests_smartretry.ResponseSignatureError` unless ``body`` with
        these ``Wechatpay-*`` headers is signed by a configured platform key and fresh.

        ``headers`` is any mapping (``requests``' and web frameworks' headers, a plain dict,
        a WSGI environ with ``HTTP_WECHATPAY_*`` keys); names match case-insensitively.
        """
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
        from cryptography.hazmat.primitives.hashes import SHA256

        fields = wechatpay_headers(headers)
        missing = [f"Wechatpay-{name.capitalize()}" for name in _REQUIRED if not fields.get(name)]
        if missing:
            raise _rejected(what, "unsigned", f"no {', '.join(missing)} header; an unsigned "
                            f"answer is to be treated as forged")
        kind = fields.get("signature-type")
        if kind and kind != SIGNATURE_TYPE:
            raise _rejected(what, "signature_type",
                            f"Wechatpay-Signature-Type is not {SIGNATURE_TYPE}")
        key = self.key_for(fields["serial"])
        if key is None:
            raise _rejected(what, "serial", f"Wechatpay-Serial names none of the "
                            f"{self._key_count()} configured platform key(s)")
        number = self._certificate_number(fields["serial"])
        if number is not None:
            # As wechatpayv3 drops such certificates: a retired key verifies nothing.
            start, end = self._validity[number]
            now = self._clock()
            if not start <= now <= end:
                state = "expired" if now > end else "not yet valid"
                raise _rejected(what, "serial", f"Wechatpay-Serial names platform certificate "
                                f"{number:X}, which is {state} (valid {_iso(start)} to "
                                f"{_iso(end)})")
        text = fields["timestamp"]
        # Plain ASCII seconds only: int() would take "1_700", "+17", other scripts' digits,
        # and a value too large for the float clock (OverflowError).
        if not _TIMESTAMP.fullmatch(text):
            raise _rejected(what, "timestamp", "Wechatpay-Timestamp is not a number of "
                            "seconds")
        skew = abs(self._clock() - int(text))
        if skew > self.max_skew:
            raise _rejected(what, "timestamp", f"Wechatpay-Timestamp is {skew:.0f} s away from "
                            f"this machine's clock (at most {self.max_skew:g} s allowed)")
        try:
            signature = base64.b64decode(fields["signature"])
        except (binascii.Error, ValueError):
            raise _rejected(what, "signature", "Wechatpay-Signature is not base64") from None
        raw = raw_body(body)
        message = f"{fields['timestamp']}\n{fields['nonce']}\n".encode() + raw + b"\n"
        try:
            key.verify(signature, message, PKCS1v15(), SHA256())
        except InvalidSignature:
            raise _rejected(what, "signature", "the signature does not verify with the "
                            "platform key Wechatpay-Serial names (tampered body or "
                            "another key)") from None

    def _key_count(self) -> int:
        return len(self._certificates) + (self._public_key is not None)


def raw_body(body: Any) -> bytes:
    """``body`` as the bytes that were signed (a ``str`` is taken as UTF-8); a clear error
    for anything else."""
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if not isinstance(body, str):
        raise TypeError(f"body must be the raw request body (bytes or str), "
                        f"got {type(body).__name__}")
    try:
        return body.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("body is a str that is not UTF-8 text (undecodable bytes?); pass "
                         "the raw body bytes, e.g. Flask's request.get_data()") from None


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def wechatpay_headers(headers: Any) -> dict[str, str]:
    """The ``Wechatpay-*`` headers by lower-case suffix (``"signature"``, ``"serial"``…),
    from a headers mapping or a WSGI/Django environ (``HTTP_WECHATPAY_SIGNATURE``)."""
    items = headers.items() if hasattr(headers, "items") else headers
    try:
        pairs = [(name, value) for name, value in items]
    except (TypeError, ValueError):
        raise TypeError(f"headers must be a mapping of header names to values (or a WSGI "
                        f"environ), got {type(headers).__name__}") from None
    found: dict[str, str] = {}
    for name, value in pairs:
        key = str(name).lower().replace("_", "-")
        if key.startswith("http-"):
            key = key[len("http-"):]
        if key.startswith("wechatpay-"):
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            found[key[len("wechatpay-"):]] = text.strip()
    return found


def _rejected(what: str, check: str, detail: str) -> ResponseSignatureError:
    return ResponseSignatureError(f"WeChat Pay {what} rejected ({check} check): {detail}",
                                  check=check)


def check_api_v3_key(value: Any) -> bytes:
    """The merchant's APIv3 key as the 32 bytes AES-256-GCM needs; a clear error (that
    never shows the key) otherwise."""
    if isinstance(value, str):
        key = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray)):
        key = bytes(value)
    else:
        raise TypeError(f"api_v3_key must be the merchant's APIv3 key (str), "
                        f"got {type(value).__name__}")
    if len(key) != 32:
        raise ValueError(f"api_v3_key must be the merchant's 32-character APIv3 key, "
                         f"got {len(key)} bytes")
    return key


def decrypt_resource(resource: Any, api_v3_key: bytes, *, what: str = "notification") -> bytes:
    """The plaintext of an ``encrypt-resource`` (AEAD_AES_256_GCM: base64 ciphertext with
    the tag appended, ``nonce``, ``associated_data``)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not isinstance(resource, Mapping):
        raise _rejected(what, "decryption", "it has no encrypted resource object")
    if resource.get("algorithm") != RESOURCE_ALGORITHM:
        raise _rejected(what, "decryption", f"resource algorithm is not {RESOURCE_ALGORITHM}")
    nonce, ciphertext = resource.get("nonce"), resource.get("ciphertext")
    associated = resource.get("associated_data") or ""
    if not isinstance(nonce, str) or not nonce or not isinstance(ciphertext, str) \
            or not isinstance(associated, str):
        raise _rejected(what, "decryption", "resource lacks nonce or ciphertext")
    try:
        data = base64.b64decode(ciphertext, validate=True)
        return AESGCM(api_v3_key).decrypt(nonce.encode("utf-8"), data,
                                          associated.encode("utf-8"))
    except (binascii.Error, ValueError, InvalidTag):
        # One message for every cause: which byte was wrong is no business of the sender.
        raise _rejected(what, "decryption", "the resource does not decrypt with this "
                        "APIv3 key (wrong key, or the ciphertext was altered)") from None


def decrypt_json(resource: Any, api_v3_key: bytes, *, what: str = "notification") -> Any:
    """:func:`decrypt_resource`, parsed as JSON."""
    plaintext = decrypt_resource(resource, api_v3_key, what=what)
    try:
        return json.loads(plaintext)
    except (ValueError, UnicodeDecodeError):
        raise _rejected(what, "decryption", "the decrypted resource is not JSON") from None
