"""Fault injection through Toxiproxy: a typed client and context-manager faults for drills."""

from resilience.chaos import faults
from resilience.chaos.toxiproxy import (
    STREAMS,
    TOXIC_TYPES,
    Proxy,
    ProxySpec,
    Stream,
    Toxic,
    ToxicType,
    ToxiproxyAPIError,
    ToxiproxyClient,
)

__all__ = [
    "STREAMS",
    "TOXIC_TYPES",
    "Proxy",
    "ProxySpec",
    "Stream",
    "Toxic",
    "ToxicType",
    "ToxiproxyAPIError",
    "ToxiproxyClient",
    "faults",
]
