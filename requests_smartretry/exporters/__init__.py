"""Metrics exporters, each an optional extra imported only when used.

::

    from requests_smartretry.exporters import PrometheusHook      # needs prometheus-client
    from requests_smartretry.exporters import OpenTelemetryHook   # needs opentelemetry-api

    session = smart_session(hooks=[PrometheusHook()])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .otel import OpenTelemetryHook
    from .prometheus import PrometheusHook

__all__ = ["OpenTelemetryHook", "PrometheusHook"]

_LAZY = {"PrometheusHook": ".prometheus", "OpenTelemetryHook": ".otel"}


def __getattr__(name: str) -> Any:
    # Importing the package must not import prometheus_client or opentelemetry.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
