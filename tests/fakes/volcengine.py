"""A fake Volcengine visual API that checks signatures with the vendor SDK's own SignerV4."""

from __future__ import annotations

import datetime
import itertools
import json
import re
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import unquote, urlsplit

from volcengine.auth.SignerV4 import SignerV4
from volcengine.auth.SignParam import SignParam
from volcengine.Credentials import Credentials

from requests_smartretry.faultserver import RecordedRequest

from ._scripted import ScriptedFake, query_of

_AUTH = re.compile(
    r"^HMAC-SHA256 Credential=(?P<ak>[^/]+)/(?P<scope>\S+), "
    r"SignedHeaders=(?P<headers>[^,]+), Signature=(?P<sig>[0-9a-f]{64})$"
)


def visual_error(code: int, message: str = "error") -> dict[str, Any]:
    """A visual API error body (the shape every response has)."""
    return {"code": code, "data": None, "message": message, "request_id": "req-fake",
            "status": code, "time_elapsed": "1ms"}


def gateway_error(code: str, status: int) -> dict[str, Any]:
    """A gateway error body (``ResponseMetadata.Error``)."""
    return {"ResponseMetadata": {"RequestId": "req-fake", "Action": "CVProcess",
                                 "Version": "2022-08-31", "Service": "cv",
                                 "Region": "cn-north-1",
                                 "Error": {"CodeN": status, "Code": code, "Message": code}}}


class FakeVisual(ScriptedFake):
    """``visual.volcengineapi.com`` on loopback.

    Every request's signature is recomputed with the ``volcengine`` SDK's
    ``SignerV4.sign_only`` from what arrived on the wire (method, path, query, signed
    headers, body, X-Date); a mismatch gets 401 SignatureDoesNotMatch, a stale X-Date 401
    InvalidTimestamp.  ``script(action, (status, body), "reset", ...)`` plays faults first.
    A submitted task's n-th ``CVSync2AsyncGetResult`` answers ``progress[n-1]`` (the last
    repeats: ``in_queue``, ``generating``, ``done``, ``expired``); an unknown task id
    answers ``not_found``.  ``queries`` counts the queries per task id.
    """

    def __init__(self, access_key: str = "AKLTfake", secret_key: str = "c2VjcmV0",
                 *, max_skew: float = 300.0, progress: tuple[str, ...] = ("done",)) -> None:
        super().__init__()
        self.progress = progress
        self.tasks: dict[str, dict[str, Any]] = {}
        self.queries: dict[str, int] = {}
        self.access_key = access_key
        self.secret_key = secret_key
        self.max_skew = max_skew
        self.valid_signatures: list[str] = []  # X-Date of every request that verified
        self._task_ids = itertools.count(1)

    def script_key(self, request: RecordedRequest) -> str:
        return dict(query_of(request)).get("Action", "")

    def reject(self, request: RecordedRequest) -> tuple[int, Any] | None:
        match = _AUTH.match(request.headers.get("authorization", ""))
        x_date = request.headers.get("x-date", "")
        if match is None or match["ak"] != self.access_key or not x_date:
            return 401, gateway_error("SignatureDoesNotMatch", 401)
        when = datetime.datetime.strptime(x_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc)
        if abs(when.timestamp() - time.time()) > self.max_skew:
            return 401, gateway_error("InvalidTimestamp", 401)
        if sdk_authorization(request, self.access_key, self.secret_key, when,
                             match["headers"].split(";")) != request.headers["authorization"]:
            return 401, gateway_error("SignatureDoesNotMatch", 401)
        self.valid_signatures.append(x_date)
        return None

    def act(self, request: RecordedRequest) -> tuple[int, Any]:
        action = self.script_key(request)
        if action == "CVSync2AsyncSubmitTask":
            data: Any = {"task_id": f"task-{next(self._task_ids)}"}
            self.tasks[data["task_id"]] = json.loads(request.body or b"{}")
        elif action == "CVSync2AsyncGetResult":
            data = self._result(json.loads(request.body or b"{}").get("task_id"))
        elif action == "CVProcess":
            data = {"image_urls": ["https://example.invalid/1.png"]}
        else:
            return 404, gateway_error("InvalidActionOrVersion", 404)
        return 200, {"code": 10000, "data": data, "message": "Success",
                     "request_id": "req-fake", "status": 10000, "time_elapsed": "1ms"}


    def _result(self, task_id: Any) -> dict[str, Any]:
        if task_id not in self.tasks:
            return {"status": "not_found"}
        with self._lock:
            seen = self.queries[task_id] = self.queries.get(task_id, 0) + 1
        status = self.progress[min(seen, len(self.progress)) - 1]
        if status == "done":
            return {"status": "done", "image_urls": ["https://example.invalid/1.png"],
                    "binary_data_base64": []}
        return {"status": status}


def sdk_authorization(request: RecordedRequest, access_key: str, secret_key: str,
                      when: datetime.datetime, signed_headers: list[str]) -> str:
    """The Authorization the ``volcengine`` SDK computes for this request as received."""
    param = SignParam()
    param.set_method(request.method)
    param.set_path(unquote(urlsplit(request.path).path) or "/")
    query: OrderedDict[str, Any] = OrderedDict()
    for key, value in query_of(request):
        if key in query:
            previous = query[key]
            query[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            query[key] = value
    param.set_query(query)
    param.set_body(request.body)
    # The SDK signs headers by their canonical spelling; the wire gives lower case.
    param.set_header_list(OrderedDict(
        ("-".join(part.capitalize() for part in name.split("-")), request.headers.get(name, ""))
        for name in signed_headers if name != "x-date"
    ))
    param.set_date(when)
    return str(SignerV4.sign_only(param, Credentials(access_key, secret_key, "cv",
                                                     "cn-north-1")).authorization)
