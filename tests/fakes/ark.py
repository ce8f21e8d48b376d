"""A fake Volcengine Ark content-generation API (video tasks) with Bearer auth."""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import urlsplit

from requests_smartretry.faultserver import RecordedRequest

from ._scripted import ScriptedFake

PREFIX = "/api/v3/contents/generations/tasks"


def ark_error(code: str, message: str = "error") -> dict[str, Any]:
    """An Ark error body."""
    return {"error": {"code": code, "message": message, "param": "", "type": "fake"}}


class FakeArk(ScriptedFake):
    """``ark.cn-beijing.volces.com/api/v3`` on loopback: create and query video tasks.

    Script keys are ``"create"`` and ``"query"``; ``tasks`` holds every created task.  A
    task's n-th query answers ``progress[n-1]`` (the last one repeats): ``queued``,
    ``running``, ``succeeded``, or ``failed`` / ``cancelled`` / ``expired`` with ``error``;
    ``queries`` counts the queries per task id.
    """

    def __init__(self, api_key: str = "ark-fake-key",
                 progress: tuple[str, ...] = ("succeeded",)) -> None:
        super().__init__()
        self.api_key = api_key
        self.tasks: dict[str, dict[str, Any]] = {}
        self.progress = progress
        self.error = {"code": "OutputVideoSensitiveContentDetected",
                      "message": "the output video may contain sensitive content"}
        self.queries: dict[str, int] = {}
        self._ids = itertools.count(1)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/api/v3"

    def client_request_ids(self) -> list[str]:
        """The ``X-Client-Request-Id`` the official SDK sent with each request, in order."""
        return [r.headers.get("x-client-request-id", "") for r in self.server.received()]

    def script_key(self, request: RecordedRequest) -> str:
        return "create" if request.method == "POST" else "query"

    def reject(self, request: RecordedRequest) -> tuple[int, Any] | None:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, ark_error("AuthenticationError", "the API key is invalid")
        return None

    def act(self, request: RecordedRequest) -> tuple[int, Any]:
        path = urlsplit(request.path).path.rstrip("/")
        if request.method == "POST" and path == PREFIX:
            task_id = f"cgt-{next(self._ids):04d}"
            self.tasks[task_id] = {"id": task_id, "status": "queued",
                                   "request": json.loads(request.body or b"{}")}
            return 200, {"id": task_id}
        if request.method == "GET" and path.startswith(PREFIX + "/"):
            task = self.tasks.get(path.rsplit("/", 1)[-1])
            if task is None:
                return 404, ark_error("ResourceNotFound", "no such task")
            with self._lock:
                seen = self.queries[task["id"]] = self.queries.get(task["id"], 0) + 1
            status = self.progress[min(seen, len(self.progress)) - 1]
            answer: dict[str, Any] = {"id": task["id"], "model": "doubao-seedance",
                                      "status": status, "created_at": 1764806400,
                                      "updated_at": 1764806400 + seen}
            if status == "succeeded":
                answer["content"] = {"video_url": "https://example.invalid/v.mp4"}
            elif status in ("failed", "cancelled", "expired"):
                answer["error"] = dict(self.error)
            return 200, answer
        return 404, ark_error("NotFound", path)
