"""Vendor presets: sessions and adapters for the three services the seed application calls.

=====================  =================================  ==========================
preset                 vendor                             ``policy.service``
=====================  =================================  ==========================
``photo_session``      Volcengine visual (art photos)     ``volcengine-visual``
``video_session``      Volcengine Ark (video tasks)       ``volcengine-ark``
``payment_session``    WeChat Pay v3 (JSAPI orders)       ``wechatpay``
=====================  =================================  ==========================

Each session resolves relative URLs against its ``endpoint`` and mounts its adapter on the
endpoint's origin only (credentials never go to another host); each ``*_adapter`` is the
same adapter for mounting on a session you already have.  Every attempt is signed afresh.
Keyword options are policy fields (``max_retries``, ``timeout``…) or adapter keywords
(``breaker``, ``budget``, ``hooks``, ``state``…).

Writing a preset for a fourth vendor
------------------------------------
The presets use only public hooks of :class:`~requests_smartretry.RetryPolicy`:
``classify_response`` (vendor codes → :class:`~requests_smartretry.Classification`, or
``None`` for the HTTP-status table), ``prepare_attempt`` (sign a copy of the request for
each attempt), ``name_request`` (operation names in log lines) and ``idempotent``::

    import hashlib, hmac, time
    from requests_smartretry import Classification, SmartRetryAdapter, Verdict
    from requests_smartretry.presets import BaseURLSession

    def classify_acme(response):               # Acme answers "busy" with HTTP 200
        code = response.json().get("error") if response.content else None
        if code == "BUSY":
            return Classification(Verdict.RATE_LIMIT, "BUSY", server_acted=False)
        if code == "BAD_INPUT":
            return Classification(Verdict.BUSINESS, "BAD_INPUT")
        return None                            # anything else: the HTTP-status table

    def acme_session(key_id, secret, endpoint="https://api.acme.example", **options):
        def sign(request, attempt):            # a fresh timestamp for every attempt
            stamp = str(int(time.time()))
            text = f"{request.method}\\n{request.path_url}\\n{stamp}".encode()
            mac = hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()
            request.headers["Authorization"] = f"ACME {key_id}:{stamp}:{mac}"
            return request
        session = BaseURLSession(endpoint)
        session.mount(endpoint + "/", SmartRetryAdapter(
            service="acme", classify_response=classify_acme, prepare_attempt=sign,
            name_request=lambda r: "Acme 下单" if r.path_url.startswith("/orders") else None,
            idempotent=lambda r: b'"order_id"' in (r.body or b""), **options))
        return session
"""

from . import ark, volcengine
from ._base import AttemptPreparer, BaseURLSession
from .ark import BearerSigner, classify_ark_response, video_adapter, video_session
from .volcengine import (
    VolcengineSigner,
    classify_visual_response,
    mount_on_sdk_service,
    photo_adapter,
    photo_session,
)
from .wechatpay import (
    PlatformVerifier,
    WechatPayAdapter,
    WechatPaySigner,
    classify_wechatpay_response,
    mount_on_wechatpay,
    order_is_idempotent,
    parse_notification,
    payment_adapter,
    payment_session,
)

__all__ = [
    "AttemptPreparer",
    "BaseURLSession",
    "BearerSigner",
    "PlatformVerifier",
    "VolcengineSigner",
    "WechatPayAdapter",
    "WechatPaySigner",
    "ark",
    "classify_ark_response",
    "classify_visual_response",
    "classify_wechatpay_response",
    "mount_on_sdk_service",
    "mount_on_wechatpay",
    "order_is_idempotent",
    "parse_notification",
    "payment_adapter",
    "payment_session",
    "photo_adapter",
    "photo_session",
    "video_adapter",
    "video_session",
    "volcengine",
]
