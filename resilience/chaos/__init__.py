"""Fault injection through Toxiproxy: a typed client and context-manager faults for drills."""

from resilience.chaos import faults
from resilience.chaos.model import STREAMS, TOXIC_TYPES, Proxy, ProxySpec, Stream, Toxic, ToxicType
from resilience.chaos.toxiproxy import ToxiproxyAPIError, ToxiproxyClient

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
